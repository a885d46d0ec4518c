"""The `LearnerGroup`: N Learner ranks as Ray actors in one placement group, joined by torch.distributed.

Rank 0 reports `master_addr:port` first, then every rank joins. `update_async` hands each rank the same batch
(each trains on its own shard); `publish_async` returns rank 0's θ_old as an ObjectRef of numpy arrays, stored
once, and its checksum.

Recovery (`learner.max_recoveries` > 0): every update also leaves each rank's state after it in Ray's object store
(one task, so a result that arrived has its state). When a rank dies during an update, `update` kills the group,
starts it afresh, loads that state and runs the update again on the same batch: the run continues as if nothing had
happened (tests/test_checkpoint.py compares it with an uninterrupted run). A rank 0 found dead when weights are
published is replaced the same way; one dying while a checkpoint is written still ends the run. A rank whose update
fails because a peer died under it (gloo: "Connection reset by peer") counts as that death, not as its own error.
The state lives on the learner's node: if the node itself is lost, the run stops and says to resume from the last
checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from configs.schema import FlowGrpoConfig, LearnerConfig, PolicyConfig
from learner.buffer import Batch
from learner.learner import Learner


def bundles(num_ranks: int, num_cpus: float, num_gpus: float,
            resources: dict[str, float] | None = None) -> list[dict[str, float]]:
    """One bundle per rank with its CPUs, GPUs and custom resources (zero amounts left out, as Ray expects)."""
    bundle = {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}
    return [{k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.001} for _ in range(num_ranks)]


class LearnerGroup:
    def __init__(self, policy_cfg: PolicyConfig, learner_cfg: LearnerConfig, *, seed: int, max_policy_lag: int = 0,
                 flow_grpo: FlowGrpoConfig | None = None, guidance_scale: float = 1.0,
                 total_updates: int = 0, placement_timeout_s: float = 120.0, log: Callable[[str], None] = print):
        self.cfg, self.policy_cfg, self.log = learner_cfg, policy_cfg, log
        self.placement_timeout_s = placement_timeout_s
        self.learner_kwargs = dict(world_size=learner_cfg.num_ranks, seed=seed, max_policy_lag=max_policy_lag,
                                   flow_grpo=flow_grpo, guidance_scale=guidance_scale, total_updates=total_updates)
        self.recoveries = 0  # dead ranks replaced in this run
        self._start()
        # What a recovery rebuilds from: every rank's state after the last update, and that update's version.
        self.snapshot: list[ray.ObjectRef] | None = self._state_refs() if learner_cfg.max_recoveries else None
        self.snapshot_version = 0
        self._pending: list[ray.ObjectRef] | None = None  # the states the update in flight will leave

    def _start(self) -> None:
        cfg = self.cfg
        self.placement = placement_group(bundles(cfg.num_ranks, cfg.num_cpus, cfg.num_gpus, cfg.resources),
                                         strategy="PACK")
        ready, _ = ray.wait([self.placement.ready()], timeout=self.placement_timeout_s)
        if not ready:
            remove_placement_group(self.placement)
            raise RuntimeError(
                f"the learner group cannot be placed within {self.placement_timeout_s:.0f}s: it needs "
                f"{cfg.num_ranks} × {{CPU: {cfg.num_cpus}, GPU: {cfg.num_gpus}}} plus "
                f"{cfg.resources or 'no custom resources'}, the "
                f"cluster has {ray.available_resources()} free; lower learner.num_ranks/num_cpus/num_gpus or add nodes")
        remote = ray.remote(Learner)
        self.ranks = [
            remote.options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=dict(cfg.resources),
                           scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, i)).remote(
                self.policy_cfg, cfg, rank=i, **self.learner_kwargs)
            for i in range(cfg.num_ranks)]
        master_addr, master_port = ray.get(self.ranks[0].address.remote())
        ray.get([rank.setup.remote(master_addr, master_port) for rank in self.ranks])

    def _state_refs(self) -> list[ray.ObjectRef]:
        return [rank.state.remote(with_weights=i == 0, with_history=True) for i, rank in enumerate(self.ranks)]

    def update_async(self, batch: Batch) -> list[ray.ObjectRef]:
        """One update on every rank; rank 0's metrics come first. With recovery on, each rank also leaves its state
        after the update (see `update`)."""
        if not self.cfg.max_recoveries:
            return [rank.update.remote(batch) for rank in self.ranks]
        pairs = [rank.update_and_state.options(num_returns=2).remote(batch, i == 0)
                 for i, rank in enumerate(self.ranks)]
        self._pending = [state for _, state in pairs]
        return [metrics for metrics, _ in pairs]

    def update(self, batch: Batch, pump: Callable[[], None] | None = None) -> dict:
        """One update; rank 0's metrics. `pump` runs while the ranks work (the collector keeps sampling). A rank
        that dies is replaced as the module docstring says, up to learner.max_recoveries times in a run."""
        while True:
            refs = self.update_async(batch)
            died = self._wait(refs, pump)
            if died is None:
                if self._pending is not None:
                    self.snapshot, self.snapshot_version, self._pending = self._pending, self.snapshot_version + 1, None
                return ray.get(refs[0])
            self._recover(died)

    @staticmethod
    def _wait(refs: list[ray.ObjectRef], pump: Callable[[], None] | None) -> RayActorError | None:
        """Until every rank answered (None) or one died (its error): the others would wait for it forever."""
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0 if pump else 1.0)
            for ref in ready:
                try:
                    ray.get(ref)
                except RayActorError as error:
                    return error
                except RayTaskError:  # a rank failed: when a peer died under it, that death is what happened
                    if (died := LearnerGroup._peer_death([r for r in refs if r != ref])) is None:
                        raise
                    return died
            if pending and pump:
                pump()
        return None

    @staticmethod
    def _peer_death(refs: list[ray.ObjectRef], timeout_s: float = 60.0) -> RayActorError | None:
        """The death among the other ranks' tasks, waited for up to `timeout_s` (Ray notices a killed process within
        seconds; its peers' collective ops may fail first). None if they all answered or failed otherwise."""
        deadline = time.monotonic() + timeout_s
        for ref in refs:
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except RayActorError as error:
                return error
            except (RayTaskError, GetTimeoutError):
                continue
        return None

    def _recover(self, error: RayActorError) -> None:
        limit = self.cfg.max_recoveries
        if self.recoveries >= limit:
            raise RuntimeError(f"a learner rank died and this run has replaced {self.recoveries} already "
                               f"(learner.max_recoveries={limit}); resume it with run.resume=auto from its last "
                               f"checkpoint, or raise learner.max_recoveries. The rank's error: {error}") from error
        try:
            states = ray.get(self.snapshot, timeout=self.placement_timeout_s)
        except (ObjectLostError, RayActorError) as lost:
            raise RuntimeError(f"a learner rank died and the learner's state after update {self.snapshot_version} "
                               "was lost with its node; resume the run with run.resume=auto from its last "
                               f"checkpoint. The rank's error: {error}") from lost
        self.recoveries += 1
        self.log(f"learner: a rank died ({type(error).__name__}); restarting the group from its state after update "
                 f"{self.snapshot_version} and retrying the update (recovery {self.recoveries} of at most {limit})")
        self.shutdown()
        self._start()
        self.load_state(states, self.snapshot_version)

    def publish_async(self, which: str = "old") -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Rank 0's θ_old ('old'), θ ('theta') or EMA ('ema') as numpy arrays, and their checksum: two refs. With
        recovery on, waits for the checksum: a rank 0 that died since the last update is replaced first (the state
        after the last update is the current one) and publishes again."""
        weights, checksum = self.ranks[0].publish.options(num_returns=2).remote(which)
        if self.cfg.max_recoveries and (died := self._wait([checksum], None)) is not None:
            self._recover(died)
            return self.publish_async(which)
        return weights, checksum

    def weights_async(self, which: str = "old") -> ray.ObjectRef:
        return self.publish_async(which)[0]

    def checksums(self) -> list[float]:
        """Every rank's weight checksum: all equal while DDP keeps the ranks in step."""
        return ray.get([rank.checksum.remote() for rank in self.ranks])

    def state(self) -> list[dict]:
        """Every rank's checkpoint state; rank 0's also holds θ, θ_old, the EMA and the optimizer."""
        return ray.get([rank.state.remote(with_weights=i == 0) for i, rank in enumerate(self.ranks)])

    def load_state(self, states: list[dict], version: int) -> None:
        """Every rank takes rank 0's weights and optimizer and its own RNG states (a new rank keeps fresh ones);
        θ_old resumes as policy `version`."""
        shared = ray.put(states[0])
        ray.get([rank.load_state.remote(shared, states[i]["rng"] if i < len(states) else None, version)
                 for i, rank in enumerate(self.ranks)])
        if self.cfg.max_recoveries:
            self.snapshot, self.snapshot_version = self._state_refs(), version

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement)
