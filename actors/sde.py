"""Flow-GRPO's stochastic sampler: the flow ODE as an SDE with the same marginals, discretised by Euler–Maruyama,
recording every latent of the trajectory and each transition's log-density under the sampling policy.

From xt at noise level σ (1 = pure noise) to σ_next < σ, with dt = σ_next − σ < 0 and v the policy's velocity:

    std    = noise_level · sqrt(σ / (1 − σ))            (at σ = 1 the denominator uses σ_max, the schedule's
                                                         largest level below 1, so the first step stays finite)
    mean   = xt · (1 + std² / (2σ) · dt) + v · (1 + std² · (1 − σ) / (2σ)) · dt
    x_next = mean + std · sqrt(−dt) · ε,   ε ~ N(0, I)

noise_level 0 gives the plain Euler step xt + v·dt. A transition's log-density is the Gaussian density of x_next
around `mean` with standard deviation std·sqrt(−dt), averaged (not summed) over the sample's dimensions, as the
Flow-GRPO reference does. NFT never needs any of this: it collects clean x0 with any ODE solver (actors/solvers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from actors.solvers import Velocity


def _per_sample(value: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or (B,) value shaped to broadcast against a (B, ...) tensor."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value


def sde_std(sigma: Tensor, *, noise_level: float, sigma_max: Tensor | float) -> Tensor:
    """std = noise_level · sqrt(σ / (1 − σ)), with σ_max (scalar or shaped like σ) in the denominator where σ = 1."""
    sigma_max = torch.as_tensor(sigma_max, dtype=sigma.dtype, device=sigma.device)
    denominator = 1 - torch.where(sigma == 1, sigma_max, sigma)
    return noise_level * torch.sqrt(sigma / denominator)


def sde_step(v: Tensor, xt: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, *, noise_level: float,
             sigma_max: Tensor | float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One Euler–Maruyama step from σ to σ_next (σ, σ_next, σ_max scalars or one per sample): (x_next, mean, std).
    Without `noise` x_next is the mean; pass ε ~ N(0, I) shaped like xt to draw. Computed in float32."""
    v, xt = v.float(), xt.float()
    sigma, sigma_next = _per_sample(sigma, xt), _per_sample(sigma_next, xt)
    sigma_max = _per_sample(sigma_max, xt)
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


@dataclass(frozen=True)
class Trajectory:
    latents: Tensor  # (B, T + 1, ...): the noise, every intermediate state, x0
    log_probs: Tensor  # (B, T): log-density of each transition under the sampling policy
    sigmas: Tensor  # (T + 1,): the noise levels of `latents`


@torch.no_grad()
def sde_sample(velocity: Velocity, noise: Tensor, sigmas: Tensor, *, noise_level: float,
               generator: torch.Generator | None = None) -> Trajectory:
    """Integrate from `noise` at sigmas[0] = 1 down to sigmas[-1] = 0 with `sde_step`, ε drawn from `generator`."""
    x, latents, log_probs = noise.float(), [noise.float()], []
    sigma_max = float(sigmas[1]) if len(sigmas) > 2 else float(sigmas[0])
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        t = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        epsilon = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        x_next, mean, std = sde_step(velocity(x, t), x, sigma, sigma_next, noise_level=noise_level,
                                     sigma_max=sigma_max, noise=epsilon)
        log_probs.append(step_log_prob(x_next, mean, std, sigma_next - sigma))
        latents.append(x_next)
        x = x_next
    return Trajectory(torch.stack(latents, dim=1), torch.stack(log_probs, dim=1), sigmas.clone())
