"""The Flow-GRPO objective as pure tensor functions: the second algorithm, beside learner/nft.py.

Collection. Flow-GRPO samples with a stochastic counterpart of the flow ODE that keeps its marginals, discretised
by Euler–Maruyama. From xt at noise level σ (1 = pure noise) to σ_next < σ, with dt = σ_next − σ < 0 and v the
velocity of the policy at (xt, σ):

    std    = noise_level · sqrt(σ / (1 − σ))            (at σ = 1 the denominator uses σ_max, the schedule's
                                                         largest level below 1, so the first step stays finite)
    mean   = xt · (1 + std² / (2σ) · dt) + v · (1 + std² · (1 − σ) / (2σ)) · dt
    x_next = mean + std · sqrt(−dt) · ε,   ε ~ N(0, I)

noise_level 0 gives the plain Euler step xt + v·dt. Each transition keeps its log-density under the policy that
drew it: the Gaussian density of x_next around `mean` with standard deviation std·sqrt(−dt), averaged (not
summed) over the sample's dimensions, as the Flow-GRPO reference does.

Training. For a stored transition, the same step under θ gives log p_θ; ratio = exp(log p_θ − log p_old). With
advantages A per prompt group (learner/nft.py's `group_advantages`), clipped to ±adv_clip_max, the policy loss is
PPO's pessimistic bound mean(max(−A·ratio, −A·clip(ratio, 1 − clip_range, 1 + clip_range))). An optional pull
toward the base model adds beta · mean over samples of mean((mean_θ − mean_ref)²) / (2·std²): the KL divergence
between the two Gaussian steps per dimension, up to the sqrt(−dt) factor the reference leaves out as well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _per_sample(value: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or (B,) value shaped to broadcast against a (B, ...) tensor."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value


def sde_std(sigma: Tensor, *, noise_level: float, sigma_max: float) -> Tensor:
    """std = noise_level · sqrt(σ / (1 − σ)), with σ_max in the denominator where σ = 1."""
    denominator = 1 - torch.where(sigma == 1, torch.as_tensor(sigma_max, dtype=sigma.dtype), sigma)
    return noise_level * torch.sqrt(sigma / denominator)


def sde_step(v: Tensor, xt: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *, noise_level: float,
             sigma_max: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One Euler–Maruyama step from σ to σ_next (scalars or one per sample): (x_next, mean, std). Without `noise`
    x_next is the mean; pass ε ~ N(0, I) shaped like xt to draw. Computed in float32 whatever the input dtype."""
    v, xt = v.float(), xt.float()
    sigma, sigma_next = _per_sample(sigma, xt), _per_sample(sigma_next, xt)
    dt = sigma_next - sigma
    std = sde_std(sigma, noise_level=noise_level, sigma_max=sigma_max)
    mean = xt * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    x_next = mean if noise is None else mean + std * torch.sqrt(-dt) * noise.float()
    return x_next, mean, std


def step_log_prob(x_next: Tensor, mean: Tensor, std: Tensor, dt: Tensor | float) -> Tensor:
    """Per sample (B,): the Gaussian log-density of x_next around mean with std·sqrt(−dt), averaged over dims."""
    scale = std * torch.sqrt(-_per_sample(dt, mean))
    log_density = -((x_next.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, log_density.dim())))


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
