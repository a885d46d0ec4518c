"""The Flow-GRPO objective as pure tensor functions: the second algorithm, beside learner/nft.py.

The stochastic step and its log-density are actors/sde.py's (the sampler records them). For a stored transition,
the same step under θ gives log p_θ; ratio = exp(log p_θ − log p_old). With advantages A per prompt group
(learner/nft.py's `group_advantages`), clipped to ±adv_clip_max, the policy loss is PPO's pessimistic bound
mean(max(−A·ratio, −A·clip(ratio, 1 − clip_range, 1 + clip_range))). An optional pull toward the base model adds
beta · mean over samples of mean((mean_θ − mean_ref)²) / (2·std²): the KL divergence between the two Gaussian
steps per dimension, up to the sqrt(−dt) factor the reference leaves out as well.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grpo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *, clip_range: float, adv_clip_max: float,
              mean: Tensor | None = None, ref_mean: Tensor | None = None, std: Tensor | None = None,
              beta: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clipped policy loss on per-sample log-probabilities (B,), plus beta · KL to the base when beta > 0
    (then `mean`, `ref_mean` and `std` of the step are required). Returns (loss, detached metrics)."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    kl = torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("grpo_loss with beta > 0 needs the step's mean under θ, its mean under the base "
                             "(ref_mean) and its std; pass them or set beta = 0")
        dims = tuple(range(1, mean.dim()))
        kl = (((mean - ref_mean.detach()) ** 2).mean(dim=dims, keepdim=True) / (2 * std**2)).mean()
    loss = policy_loss + beta * kl
    metrics = {"loss": loss, "policy_loss": policy_loss, "kl": kl, "ratio": ratio.mean(),
               "approx_kl": 0.5 * (log_ratio**2).mean(),
               "clip_fraction": ((ratio - 1).abs() > clip_range).float().mean()}
    return loss, {name: value.detach() for name, value in metrics.items()}
