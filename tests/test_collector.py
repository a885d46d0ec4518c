"""The Collector's loop on its own: a dropped group is replaced (by a call smaller than groups_per_call when fewer
are missing), skipped uniform groups still count as sampled, and a reward that never tells images apart stops the run
with an error instead of sampling forever.

The sampler pool here is an in-process stand-in that answers each sample call at once with rewards from a script;
the real pool, Samplers and scorer are exercised end to end in test_runtime.py and test_flow_grpo_runtime.py.
"""

import pytest

from actors.group import GroupSummary
from actors.prompts import PromptRecord, PromptSource
from actors.sampler_pool import Scored
from configs.schema import SamplerConfig, ScheduleConfig
from deploy.collector import Collector
from learner.buffer import Buffer

K = 4


class ScriptedPool:
    """Answers every submitted call on the next poll; group i gets rewards reward_of(i)."""

    def __init__(self, reward_of):
        self.reward_of, self.pending, self.submitted = reward_of, [], 0

    def free_slots(self) -> int:
        return 1 - len(self.pending)

    @property
    def inflight_groups(self) -> int:
        return sum(len(call) for call in self.pending)

    def submit(self, groups, score) -> None:
        self.pending.append([self.submitted + i for i in range(len(groups))])
        self.submitted += len(groups)

    def poll(self, timeout_s):
        done, self.pending = self.pending, []
        return [Scored([GroupSummary(i, f"p{i}", 0, self.reward_of(i), {}, None, K) for i in call], "training",
                       "previews") for call in done]


def make_collector(reward_of, *, skip_uniform: bool, groups_per_update: int = 2, per_call: int = 1) -> Collector:
    schedule = ScheduleConfig(groups_per_update=groups_per_update, max_inflight=1, max_policy_lag=0,
                              buffer_capacity=8, skip_uniform_groups=skip_uniform)
    buffer = Buffer(capacity=8, max_policy_lag=0, adv_clip_max=5.0, global_std=True, skip_uniform=skip_uniform)
    prompts = PromptSource([PromptRecord("a photo of a circle")], group_size=K)
    return Collector(ScriptedPool(reward_of), None, prompts, buffer, schedule, SamplerConfig(groups_per_call=per_call),
                     log=lambda line: None)


def every_third_varies(index: int) -> tuple[float, ...]:
    return (0.0, 1.0, 1.0, 1.0) if index % 3 == 2 else (1.0,) * K


def test_uniform_groups_are_replaced_and_still_counted_as_sampled():
    collector = make_collector(every_third_varies, skip_uniform=True)
    batch = collector.next_batch(learner_version=0)
    assert [e.summary.index for e in batch.entries] == [2, 5]  # groups 0, 1, 3, 4 were uniform
    assert collector.buffer.counts.uniform_groups == 4
    assert collector.sampled_images == 6 * K
    assert float(batch.advantages.abs().min()) > 0  # no zero-advantage group left in the batch


def test_a_dropped_group_is_replaced_by_a_smaller_call():
    """Two groups per call, four per update: after one uniform group the batch lacks one, and a call of one group
    fills it (waiting for room for a whole call of two would wait forever)."""
    collector = make_collector(lambda index: (1.0,) * K if index == 1 else (0.0, 1.0, 1.0, 1.0), skip_uniform=True,
                               groups_per_update=4, per_call=2)
    batch = collector.next_batch(learner_version=0)
    assert [e.summary.index for e in batch.entries] == [0, 2, 3, 4]
    assert collector.pool.submitted == 5 and collector.sampled_images == 5 * K


def test_uniform_groups_are_trained_on_by_default():
    collector = make_collector(every_third_varies, skip_uniform=False)
    batch = collector.next_batch(learner_version=0)
    assert [e.summary.index for e in batch.entries] == [0, 1]
    assert collector.buffer.counts.uniform_groups == 0


def test_a_reward_that_never_varies_stops_the_run():
    collector = make_collector(lambda index: (0.5,) * K, skip_uniform=True)
    with pytest.raises(RuntimeError, match="skip_uniform_groups=false"):
        collector.next_batch(learner_version=0)
    assert collector.buffer.counts.uniform_groups == 8 * 2  # 8 updates' worth of groups, then the error
