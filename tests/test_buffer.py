"""The Buffer: failed groups dropped and counted, stale samples dropped by max_policy_lag, r from group advantages."""

import pytest
import torch

from actors.group import GroupSummary
from learner.buffer import Buffer
from learner.learner_group import bundles
from learner.nft import group_advantages, optimality


def summary(index, version, reward=(0.0, 1.0), failure=None):
    return GroupSummary(index, f"p{index}", version, None if failure else reward, {}, failure, len(reward))


def make_buffer(**kw):
    return Buffer(capacity=kw.get("capacity", 8), max_policy_lag=kw.get("lag", 1), adv_clip_max=5.0, global_std=True,
                  skip_uniform=kw.get("skip_uniform", False))


def test_failed_groups_are_counted_never_kept():
    buffer = make_buffer()
    assert not buffer.add(summary(0, 0, failure="scorer 'shapes' failed on 1 of 2 images"), "ref", 0)
    assert len(buffer) == 0 and buffer.counts.failed_groups == 1 and "shapes" in buffer.counts.failures[0]


@pytest.mark.parametrize("skip_uniform", [False, True])
def test_uniform_groups_skipped_only_when_asked(skip_uniform):
    buffer = make_buffer(skip_uniform=skip_uniform)
    kept = [buffer.add(summary(index, 0, reward=reward), f"ref{index}", 0)
            for index, reward in enumerate([(1.0, 1.0, 1.0), (0.5, 0.5, 0.5 + 1e-3), (0.25, 0.25, 0.25)])]
    assert kept == [not skip_uniform, True, not skip_uniform]
    assert buffer.counts.uniform_groups == (2 if skip_uniform else 0) and buffer.counts.added_groups == len(buffer)
    assert [e.summary.index for e in buffer.entries] == ([1] if skip_uniform else [0, 1, 2])


def test_stale_groups_dropped_by_lag():
    buffer = make_buffer(lag=1)
    for index, version in enumerate([0, 1, 2, 2]):
        buffer.add(summary(index, version), f"ref{index}", 0)
    assert buffer.pop_batch(2, learner_version=2) is not None  # versions 1, 2 are within lag 1 of 2
    assert buffer.counts.stale_groups == 1 and buffer.counts.stale_samples == 2
    assert [e.summary.index for e in buffer.entries] == [3]


def test_batch_is_ordered_and_carries_r():
    buffer = make_buffer()
    for index in [3, 1, 2]:
        buffer.add(summary(index, 0, reward=(float(index), 0.0, 1.0)), f"ref{index}", 0)
    assert buffer.pop_batch(4, learner_version=0) is None
    batch = buffer.pop_batch(2, learner_version=0)
    assert [e.summary.index for e in batch.entries] == [1, 2]  # earliest first, whatever the arrival order
    rewards = torch.tensor([[1.0, 0.0, 1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    expected = optimality(group_advantages(rewards.flatten(), torch.arange(2).repeat_interleave(3)), adv_clip_max=5.0)
    torch.testing.assert_close(batch.r, expected.view(2, 3).float())
    assert batch.r.min() >= 0 and batch.r.max() <= 1


def test_capacity_bound_counts_overflow():
    buffer = make_buffer(capacity=2)
    for index in range(3):
        buffer.add(summary(index, 0), f"ref{index}", 0)
    assert len(buffer) == 2 and buffer.counts.overflow_groups == 1


@pytest.mark.parametrize("ranks, cpus, gpus, expected", [
    (1, 1.0, 0.0, [{"CPU": 1.0}]),
    (2, 4.0, 1.0, [{"CPU": 4.0, "GPU": 1.0}] * 2),
    (3, 0.0, 1.0, [{"GPU": 1.0}] * 3),
    (1, 0.0, 0.0, [{"CPU": 0.001}]),
], ids=["one-cpu-rank", "two-gpu-ranks", "gpu-only", "no-resources"])
def test_learner_bundles(ranks, cpus, gpus, expected):
    assert bundles(ranks, cpus, gpus) == expected
