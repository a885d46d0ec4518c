"""The `Collector` keeps the sampler pool busy and fills the Buffer: sample → score → buffer.

Admission control bounds staleness by what it admits (as AReaL does), so no sample is drawn that will be too old
when it is trained. The buffer hands out groups in admission order, G per update (G = groups_per_update). A group
admitted while θ_old is at version v, with n groups already in flight or buffered and a batch of G in training
(or not), is trained at version v + ⌈(n + 1)/G⌉ − 1 + (1 if an update runs): at most max_policy_lag L ahead when
n < (L + 1)·G, less G while an update runs. So at most (L + 1) updates' worth of groups are committed, counting the
batch being trained. Under the synchronous schedule (L = 0) nothing is admitted during an update, which then
matches the reference implementation's sample-then-train loop; under L ≥ 1 the samplers draw the next batch while
the learner trains. Samples can still turn stale when a restarted Sampler draws with its base weights.
"""

from __future__ import annotations

import time

import ray

from actors.prompts import PromptSource
from actors.sampler_pool import SamplerPool
from configs.schema import SamplerConfig, ScheduleConfig
from learner.buffer import Batch, Buffer


class Collector:
    def __init__(self, pool: SamplerPool, scorer: ray.actor.ActorHandle, prompts: PromptSource, buffer: Buffer,
                 schedule: ScheduleConfig, sampler_cfg: SamplerConfig, *, log=print, wait_log_s: float = 60.0):
        self.pool, self.scorer, self.prompts, self.buffer, self.schedule = pool, scorer, prompts, buffer, schedule
        self.per_call = sampler_cfg.groups_per_call
        self.log, self.wait_log_s = log, wait_log_s
        self.sampled_images = 0
        self.failure_streak = 0  # groups failed in a row: a reward side that is down must not hang the run
        self.max_failure_streak = 2 * schedule.groups_per_update
        self.uniform_streak = 0  # groups skipped in a row as uniform: a reward that cannot rank images must not hang it
        self.max_uniform_streak = 8 * schedule.groups_per_update

    def score(self, sampled: ray.ObjectRef) -> tuple[ray.ObjectRef, ray.ObjectRef, ray.ObjectRef]:
        """sample → score: a sample call's output ref goes straight to the GroupScorer; back come the refs of the
        driver's summaries, the learner's TrainingGroups and the grids' previews."""
        return self.scorer.score.options(num_returns=3).remote(sampled)

    def allowed_groups(self, update_running: bool) -> int:
        """How many more groups may be requested now without any of them exceeding max_policy_lag when trained."""
        per_update = self.schedule.groups_per_update
        ahead = per_update * (1 + self.schedule.max_policy_lag) - (per_update if update_running else 0)
        committed = self.pool.inflight_groups + len(self.buffer)
        return min(ahead - committed, self.schedule.buffer_capacity - committed)

    def pump(self, update_running: bool = True, timeout_s: float = 0.05) -> None:
        """Top the pool up within admission control, then move finished calls into the buffer."""
        # a call may carry fewer than groups_per_call groups: after a dropped group (failed or uniform) the batch
        # may lack fewer than that, and waiting for room for a whole call would wait forever
        while self.pool.free_slots() and (room := min(self.per_call, self.allowed_groups(update_running))) > 0:
            self.pool.submit([self.prompts.next_group() for _ in range(room)], self.score)
        for scored in self.pool.poll(timeout_s):
            for slot, summary in enumerate(scored.summaries):
                self.sampled_images += summary.size
                kept = self.buffer.add(summary, scored.training_ref, slot, scored.previews_ref)
                failed = summary.failure is not None
                self.failure_streak = self.failure_streak + 1 if failed else 0
                self.uniform_streak = 0 if kept or failed else self.uniform_streak + 1
        if self.failure_streak >= self.max_failure_streak:
            raise RuntimeError(f"{self.failure_streak} groups in a row failed scoring; last failure: "
                               f"{self.buffer.counts.failures[-1]}. Check the reward servers (reward.urls/replicas)")
        if self.uniform_streak >= self.max_uniform_streak:
            raise RuntimeError(f"{self.uniform_streak} groups in a row were skipped because all their images got the "
                               "same reward (schedule.skip_uniform_groups): the reward does not tell this policy's "
                               "images apart. Check the reward (reward.weights), or set schedule.skip_uniform_groups="
                               "false to train on such groups")

    def next_batch(self, learner_version: int) -> Batch:
        """Pump until the buffer yields a batch of fresh groups; long waits are logged, never silent."""
        start = last_log = time.time()
        while (batch := self.buffer.pop_batch(self.schedule.groups_per_update, learner_version)) is None:
            self.pump(update_running=False)
            if time.time() - last_log > self.wait_log_s:
                last_log = time.time()
                counts = self.buffer.counts
                self.log(f"waiting {last_log - start:.0f}s for a batch: {len(self.buffer)}/"
                         f"{self.schedule.groups_per_update} groups buffered, {self.pool.inflight_groups} in flight, "
                         f"{counts.failed_groups} failed, {counts.stale_groups} stale"
                         + (f"; last failure: {counts.failures[-1]}" if counts.failures else "")
                         + (f"; {self.pool.waiting_for()}" if self.pool.waiting_for() else ""))
        return batch
