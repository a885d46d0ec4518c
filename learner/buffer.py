"""The `Buffer`: scored groups held as Ray ObjectRefs, bounded, turned into batches with advantages and r.

It lives in the driver and holds only references and small summaries; the tensors stay in the object store
until a Learner rank fetches its shard. Failed groups and samples older than `max_policy_lag` are dropped and
counted, never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from actors.group import GroupSummary
from learner.nft import group_advantages, optimality


@dataclass(frozen=True)
class Entry:
    summary: GroupSummary
    ref: Any  # ObjectRef of the list of TrainingGroups one sample call returned
    slot: int  # this group's position in that list
    previews: Any = None  # ObjectRef of that call's first images (G, H, W, 3), for grids


@dataclass(frozen=True)
class Batch:
    """One update's worth of groups: where their tensors are, and each sample's optimality r."""

    entries: tuple[Entry, ...]
    r: torch.Tensor  # (G, K) NFT's optimality
    advantages: torch.Tensor  # (G, K) what r is made from; Flow-GRPO trains on them directly
    rewards: torch.Tensor  # (G, K)
    policy_versions: tuple[int, ...]  # per group


@dataclass
class BufferCounts:
    added_groups: int = 0
    failed_groups: int = 0
    stale_groups: int = 0
    stale_samples: int = 0
    overflow_groups: int = 0
    uniform_groups: int = 0  # skipped: every image of the group got the same reward, so every advantage is 0
    failures: list[str] = field(default_factory=list)  # the last few failure reasons, for the log


UNIFORM_TOLERANCE = 1e-6  # rewards of a group closer than this count as equal


class Buffer:
    def __init__(self, *, capacity: int, max_policy_lag: int, adv_clip_max: float, global_std: bool,
                 skip_uniform: bool = False):
        self.capacity, self.max_policy_lag, self.skip_uniform = capacity, max_policy_lag, skip_uniform
        self.adv_clip_max, self.global_std = adv_clip_max, global_std
        self.entries: list[Entry] = []
        self.counts = BufferCounts()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, summary: GroupSummary, ref: Any, slot: int, previews: Any = None) -> bool:
        """Keep a scored group; a failed one is counted and dropped, and so is a uniform one (all K rewards equal)
        when `skip_uniform` is set. Returns whether it was kept."""
        if summary.failure is not None:
            self.counts.failed_groups += 1
            self.counts.failures = [*self.counts.failures[-4:], summary.failure]
            return False
        if self.skip_uniform and max(summary.reward) - min(summary.reward) <= UNIFORM_TOLERANCE:
            self.counts.uniform_groups += 1
            return False
        if len(self.entries) >= self.capacity:  # the driver's admission control should make this rare
            self.entries.sort(key=lambda e: e.summary.index)
            self.entries.pop(0)
            self.counts.overflow_groups += 1
        self.entries.append(Entry(summary, ref, slot, previews))
        self.counts.added_groups += 1
        return True

    def drop_stale(self, learner_version: int) -> None:
        oldest = learner_version - self.max_policy_lag
        stale = [e for e in self.entries if e.summary.policy_version < oldest]
        self.entries = [e for e in self.entries if e.summary.policy_version >= oldest]
        self.counts.stale_groups += len(stale)
        self.counts.stale_samples += sum(e.summary.size for e in stale)

    def pop_batch(self, num_groups: int, learner_version: int) -> Batch | None:
        """The `num_groups` earliest fresh groups with their r, or None while fewer are held."""
        self.drop_stale(learner_version)
        if len(self.entries) < num_groups:
            return None
        self.entries.sort(key=lambda e: e.summary.index)  # deterministic order, whatever the arrival order
        taken, self.entries = self.entries[:num_groups], self.entries[num_groups:]
        rewards = torch.tensor([e.summary.reward for e in taken], dtype=torch.float64)  # (G, K)
        group_ids = torch.arange(num_groups).repeat_interleave(rewards.shape[1])
        advantages = group_advantages(rewards.flatten(), group_ids, global_std=self.global_std).view_as(rewards)
        r = optimality(advantages, adv_clip_max=self.adv_clip_max)
        return Batch(tuple(taken), r.float(), advantages.float(), rewards.float(),
                     tuple(e.summary.policy_version for e in taken))
