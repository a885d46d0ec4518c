"""K samples of one prompt, as each consumer needs them.

`Group` is what a Sampler returns and the reward side scores (with images); after scoring it splits into a
`TrainingGroup` for the learner (x0 and conditioning, no pixels), a `GroupSummary` for the driver (small, frozen)
and one preview image for the run's grids. The images are released once scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Group:
    index: int  # the PromptGroup's position in the prompt stream
    prompt: str
    metadata: dict[str, Any]
    seeds: tuple[int, ...]
    policy_version: int  # θ_old version every sample of the group was drawn with
    embeds: torch.Tensor  # (L, D) once per group
    pooled: torch.Tensor  # (D,)
    x0: torch.Tensor  # (K, C, h, w) clean latents
    timesteps: torch.Tensor  # (T,) collection timesteps t in (0, 1], shared by the group's samples
    images: np.ndarray | None  # (K, H, W, 3) uint8
    latents: torch.Tensor | None = None  # (K, T + 1, C, h, w) the SDE trajectory (Flow-GRPO only)
    log_probs: torch.Tensor | None = None  # (K, T) each transition's log-density under θ_old (Flow-GRPO only)
    scores: dict[str, list[float]] = field(default_factory=dict)  # every key a scorer reported
    reward: list[float] | None = None  # R = Σ_k w_k · score_k, the training reward
    failure: str | None = None  # why scoring failed; such a group is dropped, never given a default

    @property
    def size(self) -> int:
        return int(self.x0.shape[0])

    def for_learner(self) -> TrainingGroup:
        return TrainingGroup(self.index, self.policy_version, self.x0, self.embeds, self.pooled, self.timesteps,
                             self.latents, self.log_probs)


@dataclass(frozen=True)
class TrainingGroup:
    """What a learner rank fetches of a scored group: what the NFT loss trains on, nothing else."""

    index: int
    policy_version: int  # θ_old version that drew the samples: the one whose v_old they are trained with
    x0: torch.Tensor  # (K, C, h, w) clean latents
    embeds: torch.Tensor  # (L, D)
    pooled: torch.Tensor  # (D,)
    timesteps: torch.Tensor  # (T,) collection timesteps
    latents: torch.Tensor | None = None  # (K, T + 1, C, h, w) Flow-GRPO's trajectory; None under NFT
    log_probs: torch.Tensor | None = None  # (K, T) Flow-GRPO's per-step log-densities under θ_old

    @property
    def size(self) -> int:
        return int(self.x0.shape[0])


@dataclass(frozen=True)
class GroupSummary:
    """What the driver needs of a scored group without pulling its tensors out of the object store."""

    index: int
    prompt: str
    policy_version: int
    reward: tuple[float, ...] | None
    scores: dict[str, tuple[float, ...]]
    failure: str | None
    size: int

    @classmethod
    def of(cls, group: Group) -> GroupSummary:
        return cls(group.index, group.prompt, group.policy_version,
                   tuple(group.reward) if group.reward is not None else None,
                   {k: tuple(v) for k, v in group.scores.items()}, group.failure, group.size)
