"""The DiffusionNFT objective as pure tensor functions (buffer → advantages → r; learner → loss; θ_old schedule).

Objective (docs/algorithm.md). Rewards R are normalised per prompt group: A = (R − group mean) / (std + 1e-4),
with the std taken over all rewards passed in (or per group). The optimality r = clip(A, −m, m)/m/2 + 1/2 with
m = adv_clip_max lies in [0, 1]: 1 clearly better than its group, 0 clearly worse. On a clean sample x0 noised
to xt = (1 − t)·x0 + t·ε, the trained velocity v_theta and the sampling policy's v_old (no gradient) define an
implicit positive policy v⁺ = β·v_theta + (1 − β)·v_old and a negative one v⁻ = (1 + β)·v_old − β·v_theta
(β = nft_beta). Each gives an x0 estimate x̂0± = xt − t·v±, scored by its squared error to x0 divided by a
per-sample weight w± = max(mean |x̂0± − x0|, 1e-5) that carries no gradient: L± = mean((x̂0± − x0)² / w±).
Good samples (r → 1) pull v⁺ toward the velocity that reconstructs x0; bad ones (r → 0) pull v⁻ there, which
pushes v_theta away. Per sample ℓ = (r·L⁺ + (1 − r)·L⁻) / β; the policy loss is adv_clip_max · mean(ℓ), and
the total adds kl_coef · mean((v_theta − v_ref)²), a pull toward the base model. After each epoch's optimizer
steps, θ_old ← d·θ_old + (1 − d)·θ with a decay d(s) that rises linearly after `flat` steps up to `cap`.

Deviations from the paper and the reference implementation, in plain words:
1. The loss is the reference's x0-space form with adaptive weights, where the paper states it on velocities:
   since x̂0± − x0 = t·((ε − x0) − v±), it is velocity matching reweighted per sample by t²/w±, times the
   reference's scalings 1/β and adv_clip_max.
2. The reference calls both nft_beta and kl_coef "beta"; here they have separate names.
3. v_ref may be None when kl_coef is 0, so no base-model forward is needed; kl is then reported as 0.
4. No NaN guard (none is specified): a non-finite loss reaches the caller unchanged, never silently zeroed.
5. "Global" std means over the rewards passed in; in the reference that is the whole epoch, here the buffer
   decides which rewards it pools (a whole epoch in the synchronous schedule).
The weights are float64 as specified, so the division promotes L± and the returned loss to float64.
"""

import math

import torch
from torch import Tensor

WEIGHT_MIN = 1e-5  # floor of the adaptive weights w±


def group_advantages(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-4, global_std: bool = True) -> Tensor:
    """A = (R − mean of R's group) / (std + eps); std over all `rewards` (population, ddof 0) or per group."""
    assert rewards.shape == group_ids.shape and rewards.dim() == 1, (rewards.shape, group_ids.shape)
    _, group = torch.unique(group_ids, return_inverse=True)  # (N,) group index in 0..G−1
    count = torch.bincount(group).to(rewards.dtype)  # (G,)
    mean = torch.zeros_like(count).index_add_(0, group, rewards) / count  # (G,)
    centered = rewards - mean[group]  # (N,)
    if global_std:
        std = rewards.std(correction=0)
    else:
        std = (torch.zeros_like(count).index_add_(0, group, centered**2) / count).sqrt()[group]  # (N,)
    return centered / (std + eps)


def optimality(advantages: Tensor, *, adv_clip_max: float) -> Tensor:
    """r = clip(clip(A, −m, m) / m / 2 + 0.5, 0, 1) with m = adv_clip_max: 0 worst, 0.5 average, 1 best."""
    clipped = advantages.clamp(-adv_clip_max, adv_clip_max)
    return (clipped / adv_clip_max / 2 + 0.5).clamp(0, 1)


def _weighted_x0_error(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """Per sample mean((x̂0 − x0)² / w) with w = max(mean |x̂0 − x0|, 1e-5) in float64, without gradient."""
    dims = tuple(range(1, x0.dim()))
    with torch.no_grad():
        w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp_min(WEIGHT_MIN)  # (B, 1, 1, 1)
    return ((x0_hat - x0) ** 2 / w).mean(dim=dims)  # (B,)


def nft_loss(
    *,
    v_theta: Tensor,
    v_old: Tensor,
    v_ref: Tensor | None,
    x0: Tensor,
    xt: Tensor,
    t: Tensor,
    r: Tensor,
    nft_beta: float,
    kl_coef: float,
    adv_clip_max: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The NFT loss on one batch at one timestep per sample; returns (scalar loss, metrics).

    Step by step in docs/algorithm.md, 'The loss'.

    v_theta, v_old, v_ref, x0, xt: (B, C, H, W) (any trailing shape); t, r: (B,) with t in (0, 1].
    Metrics are detached: loss, policy_loss, positive_loss, negative_loss, kl, old_deviation.
    """
    if v_ref is None and kl_coef != 0:
        raise ValueError(f"v_ref is None but kl_coef is {kl_coef}: pass the base model's velocity or set kl_coef 0")
    t = t.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, 1, 1)
    v_old = v_old.detach()
    v_pos = nft_beta * v_theta + (1 - nft_beta) * v_old  # (B, C, H, W)
    v_neg = (1 + nft_beta) * v_old - nft_beta * v_theta  # (B, C, H, W)
    positive_loss = _weighted_x0_error(xt - t * v_pos, x0)  # (B,)
    negative_loss = _weighted_x0_error(xt - t * v_neg, x0)  # (B,)
    per_sample = (r * positive_loss + (1 - r) * negative_loss) / nft_beta  # (B,)
    policy_loss = adv_clip_max * per_sample.mean()
    if v_ref is None:
        kl = policy_loss.new_zeros(())
    else:
        kl = ((v_theta - v_ref.detach()) ** 2).mean()
    loss = policy_loss + kl_coef * kl
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "positive_loss": positive_loss.mean(),
        "negative_loss": negative_loss.mean(),
        "kl": kl,
        "old_deviation": ((v_theta - v_old) ** 2).mean(),
    }
    return loss, {name: value.detach() for name, value in metrics.items()}


def old_policy_decay(step: int, *, flat: int, uprate: float, cap: float) -> float:
    """d(s) = 0 if s < flat else min(uprate·(s − flat), cap); then θ_old ← d·θ_old + (1 − d)·θ."""
    return 0.0 if step < flat else min(uprate * (step - flat), cap)


def learning_rate(step: int, *, lr: float, schedule: str, decay_steps: int, final_ratio: float) -> float:
    """lr of optimizer step `step` (0-based): constant, or a cosine from lr down to lr·final_ratio over decay_steps
    steps, then flat at lr·final_ratio."""
    if schedule == "constant":
        return lr
    progress = min(step / max(decay_steps, 1), 1.0)
    return lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def eval_ema_decay(step: int, decay: float) -> float:
    """Decay of the evaluation EMA of θ after optimizer step `step` (1-based), warmed up as the reference's:
    min((1 + s) / (10 + s), decay), so the first steps are not averaged with the initial θ at full weight."""
    return min((1 + step) / (10 + step), decay)


def training_timesteps(collection_timesteps: Tensor, fraction: float, generator: torch.Generator | None) -> Tensor:
    """Per sample a random permutation of its collection timesteps (B, T), keeping the first int(T·fraction)."""
    batch, steps = collection_timesteps.shape
    order = torch.rand(batch, steps, generator=generator).argsort(dim=1).to(collection_timesteps.device)  # (B, T)
    return collection_timesteps.gather(1, order)[:, : int(steps * fraction)]  # (B, int(T·fraction))
