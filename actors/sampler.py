"""The `Sampler` actor: θ_old at a `policy_version` turns prompt groups into `Group`s of clean x0 and images.

Data collection uses any black-box ODE solver (actors.solvers), CFG off by default, as NFT prescribes; a Sampler
built with `noise_level` collects Flow-GRPO's SDE trajectories with their log-probabilities instead. The
learner's weights arrive by `load_weights(ref, version)` between `sample` calls (Ray runs actor methods in order).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from actors.affinity import pin
from actors.group import Group
from actors.metrics import SamplerMetrics
from actors.policy import OLD, THETA, Policy, weights_checksum
from actors.prompts import PromptGroup
from actors.sde import sde_sample
from actors.solvers import Solver, solve
from configs.schema import PolicyConfig, SamplerConfig


class Sampler:
    def __init__(self, policy_cfg: PolicyConfig, sampler_cfg: SamplerConfig, *, index: int = 0,
                 noise_level: float | None = None, device: str | None = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pin(sampler_cfg.cpu_affinity)
        # θ_old samples the training data; the THETA slot holds weights under evaluation (θ or its EMA).
        self.policy = Policy.from_pretrained(policy_cfg, adapters=(OLD, THETA), device=device)
        self.cfg = sampler_cfg
        self.noise_level = noise_level  # None: NFT's ODE collection; else Flow-GRPO's SDE with this noise level
        self.policy_version = 0
        self.eval_version = -1
        self.metrics = SamplerMetrics(index)  # index: this actor's place in the SamplerPool, a metric tag

    def load_weights(self, weights: dict[str, np.ndarray | torch.Tensor], version: int,
                     published_at: float | None = None) -> tuple[float, str]:
        """Swap θ_old to `version`; returns when it was applied (for the broadcast latency) and the checksum of the
        θ_old now in the adapter, read back from its parameters, which the driver checks against the learner's."""
        self.policy.load_weights(weights, OLD)
        self.policy_version = version
        self.metrics.weights_applied(version, published_at)
        return time.time(), weights_checksum(self.policy.lora_parameters(OLD))

    def ready(self) -> int:
        """Answers once the actor is built; returns the policy version it holds."""
        return self.policy_version

    def sample(self, groups: list[PromptGroup]) -> list[Group]:
        """Collect one group per PromptGroup with θ_old and the configured solver."""
        sampled = self._sample(groups, adapter=OLD, solver=self.cfg.solver, num_steps=self.cfg.num_steps,
                               guidance_scale=self.cfg.guidance_scale, version=self.policy_version,
                               noise_level=self.noise_level)
        self.metrics.sampled(sum(g.size for g in sampled))
        return sampled

    def evaluate(self, groups: list[PromptGroup], weights: dict[str, torch.Tensor] | None, version: int, *,
                 solver: Solver, num_steps: int, guidance_scale: float) -> list[Group]:
        """Sample held-out prompts with `weights` (θ or its EMA) in the evaluation slot; None: the base θ_ref."""
        if weights is not None and version != self.eval_version:
            self.policy.load_weights(weights, THETA)
            self.eval_version = version
        return self._sample(groups, adapter=THETA if weights is not None else None, solver=solver,
                            num_steps=num_steps, guidance_scale=guidance_scale, version=version)

    @torch.no_grad()
    def _sample(self, groups: list[PromptGroup], *, adapter: str | None, solver: Solver, num_steps: int,
                guidance_scale: float, version: int, noise_level: float | None = None) -> list[Group]:
        policy, size = self.policy, len(groups[0].seeds)
        if any(len(g.seeds) != size for g in groups):
            raise ValueError("all groups of one sample call must have the same number of seeds")
        embeds, pooled = policy.encode([g.prompt for g in groups])  # (G, L, D), (G, D)
        noise = torch.stack([torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(seed))
                             for g in groups for seed in g.seeds]).to(policy.device)  # (G·K, *latent_shape)
        cond = (embeds.repeat_interleave(size, 0), pooled.repeat_interleave(size, 0))
        sigmas = policy.sigmas(num_steps, self.cfg.shift)  # (T + 1,) the family's schedule

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return policy.guided_velocity(x, t, *cond, guidance_scale)

        latents = log_probs = None
        with policy.adapter(adapter):
            if noise_level is None:
                x0 = solve(velocity, noise, sigmas, solver)  # (G·K, C, h, w)
            else:  # the SDE's own noise is seeded by the call's first image seed: reruns draw the same
                trajectory = sde_sample(velocity, noise, sigmas, noise_level=noise_level,
                                        generator=torch.Generator().manual_seed(groups[0].seeds[0] + 1))
                latents, log_probs = trajectory.latents.cpu(), trajectory.log_probs.cpu()  # (G·K, T+1, ...), (G·K, T)
                x0 = trajectory.latents[:, -1]
        images = policy.decode(x0)
        x0, timesteps = x0.cpu(), sigmas[:-1].clone()

        def part(tensor: torch.Tensor | None, i: int) -> torch.Tensor | None:
            return None if tensor is None else tensor[i * size:(i + 1) * size]

        return [Group(index=g.index, prompt=g.prompt, metadata=g.metadata, seeds=g.seeds, policy_version=version,
                      embeds=embeds[i].cpu(), pooled=pooled[i].cpu(), x0=x0[i * size:(i + 1) * size],
                      timesteps=timesteps, images=images[i * size:(i + 1) * size], latents=part(latents, i),
                      log_probs=part(log_probs, i))
                for i, g in enumerate(groups)]
