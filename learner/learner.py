"""One `Learner` rank: θ (trained LoRA), θ_old (its EMA, the sampling policy), θ_ref (adapters off), AdamW.

`update(batch)` applies the NFT loss on the forward process to this rank's shard of a batch, synchronising
gradients with DDP when the LearnerGroup has several ranks, then moves θ_old toward θ by the schedule.

Under `algorithm: flow_grpo` the same update applies Flow-GRPO's clipped objective (learner/flow_grpo.py) to the
stored SDE transitions instead, with θ_old = θ (the samplers draw on-policy) and the samplers' log-probabilities
as the old ones.

Each sample's v_old comes from the θ_old that drew it. The learner's `version` counts updates, as the broadcast
does (θ_old of version v is the one published after v updates); under `max_policy_lag` L ≥ 1 it keeps the LoRA
states of the last L + 1 versions and computes a lagged sample's v_old with its own version in a third adapter.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist

from actors.affinity import pin
from actors.group import TrainingGroup
from actors.policy import LAGGED, OLD, THETA, Policy, as_numpy, weights_checksum
from actors.sde import sde_step, step_log_prob
from configs.schema import FlowGrpoConfig, LearnerConfig, PolicyConfig
from learner.buffer import Batch
from learner.flow_grpo import grpo_loss
from learner.metrics import LearnerMetrics
from learner.nft import eval_ema_decay, learning_rate, nft_loss, old_policy_decay, training_timesteps


class Learner:
    def __init__(self, policy_cfg: PolicyConfig, learner_cfg: LearnerConfig, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, max_policy_lag: int = 0, flow_grpo: FlowGrpoConfig | None = None,
                 guidance_scale: float = 1.0, total_updates: int = 0, device: str | None = None):
        self.cfg, self.rank, self.world_size, self.seed = learner_cfg, rank, world_size, seed
        self.flow_grpo, self.guidance_scale = flow_grpo, guidance_scale  # flow_grpo None: NFT
        self.max_policy_lag = max_policy_lag
        decay_updates = learner_cfg.lr_decay_updates or total_updates
        if learner_cfg.lr_schedule == "cosine" and not decay_updates:
            raise ValueError("learner.lr_schedule cosine needs the updates its decay spans: set "
                             "learner.lr_decay_updates or pass the run's total_updates")
        self.lr_decay_steps = decay_updates * learner_cfg.gradient_steps_per_update
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if learner_cfg.cpu_affinity:
            pin(learner_cfg.cpu_affinity, learner_cfg.num_threads)
        elif learner_cfg.num_threads:
            torch.set_num_threads(learner_cfg.num_threads)
        torch.manual_seed(seed)  # θ and θ_old start equal and identical on every rank
        adapters = (THETA, OLD, LAGGED) if max_policy_lag > 0 else (THETA, OLD)
        self.policy = Policy.from_pretrained(policy_cfg, adapters=adapters, device=device)
        self.policy.load_weights(self.policy.get_weights(THETA), OLD)
        self.theta = self.policy.lora_parameters(THETA)
        self.old = self.policy.lora_parameters(OLD)
        self.version = 0  # updates applied: the version of the θ_old in the OLD adapter
        self.old_versions: dict[int, dict[str, torch.Tensor]] = {}  # version -> θ_old, the last L + 1 (lag L ≥ 1)
        self.lagged_version: int | None = None  # the version loaded in the LAGGED adapter
        self._keep_old_version()
        self.ema = {k: p.detach().clone() for k, p in self.theta.items()}
        self.optimizer = torch.optim.AdamW(list(self.theta.values()), lr=learner_cfg.lr, betas=learner_cfg.betas,
                                           weight_decay=learner_cfg.weight_decay, eps=learner_cfg.adam_eps)
        self.autocast_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[learner_cfg.mixed_precision]
        self.scaler = torch.amp.GradScaler(enabled=learner_cfg.mixed_precision == "fp16")
        self.step = 0  # optimizer steps so far
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.generator = torch.Generator().manual_seed(seed + 1)  # same on every rank: same shuffles
        self.noise_generator = torch.Generator().manual_seed(seed + 1000 + rank)
        self.metrics = LearnerMetrics(rank)

    # ---- distributed set-up: rank 0 reports an address, then every rank joins ---------------------------------
    def address(self) -> tuple[str, int]:
        import socket

        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> int:
        if self.world_size == 1:
            return self.rank
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        backend = self.cfg.backend if self.cfg.backend != "auto" else (
            "nccl" if self.policy.device.type == "cuda" else "gloo")
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        self.policy.denoiser = torch.nn.parallel.DistributedDataParallel(
            self.policy.transformer, broadcast_buffers=False)
        return self.rank

    # ---- the update -------------------------------------------------------------------------------------------
    def _shard(self, batch: Batch) -> dict[str, torch.Tensor]:
        """This rank's samples of the batch, shuffled the same way on every rank."""
        refs = list(dict.fromkeys(e.ref for e in batch.entries))
        fetched = dict(zip(refs, ray.get(refs), strict=True))
        groups: list[TrainingGroup] = [fetched[e.ref][e.slot] for e in batch.entries]
        size = groups[0].size
        order = torch.randperm(len(groups) * size, generator=self.generator)[self.rank::self.world_size]
        g, k = order // size, order % size
        device = self.policy.device
        return {
            "x0": torch.stack([groups[i].x0[j] for i, j in zip(g.tolist(), k.tolist(), strict=True)]).to(device),
            "embeds": torch.stack([groups[i].embeds for i in g.tolist()]).to(device),
            "pooled": torch.stack([groups[i].pooled for i in g.tolist()]).to(device),
            "timesteps": torch.stack([groups[i].timesteps for i in g.tolist()]),
            "r": batch.r[g, k].to(device),
            "version": torch.tensor(batch.policy_versions)[g],  # the θ_old version that drew each sample
            **({} if self.flow_grpo is None else {  # Flow-GRPO: the trajectory, its log-probs and A itself
                "latents": torch.stack([groups[i].latents[j] for i, j in zip(g.tolist(), k.tolist(), strict=True)]),
                "log_probs": torch.stack([groups[i].log_probs[j] for i, j in zip(g.tolist(), k.tolist(), strict=True)]),
                "advantages": batch.advantages[g, k]}),
        }

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.policy.device.type, dtype=self.autocast_dtype)

    def _loss(self, data: dict[str, torch.Tensor], t: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = data["x0"]  # (B, *latent_shape)
        t = t.to(x0.device)
        noise = torch.randn(x0.shape, generator=self.noise_generator).to(x0.device)
        t_b = t.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ...) broadcast over any latent layout
        xt = (1 - t_b) * x0 + t_b * noise
        cond = (data["embeds"], data["pooled"])
        with self._autocast():
            with torch.no_grad():
                v_old = self.old_velocity(xt, t, *cond, versions=data["version"])
                v_ref = None
                if self.cfg.kl_coef > 0:
                    with self.policy.adapter(None):
                        v_ref = self.policy.velocity(xt, t, *cond)
            with self.policy.adapter(THETA):
                v_theta = self.policy.velocity(xt, t, *cond)
        return nft_loss(v_theta=v_theta, v_old=v_old, v_ref=v_ref, x0=x0, xt=xt, t=t, r=data["r"],
                        nft_beta=self.cfg.nft_beta, kl_coef=self.cfg.kl_coef, adv_clip_max=self.cfg.adv_clip_max)

    def _grpo_loss(self, data: dict[str, torch.Tensor], step: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Flow-GRPO on transition `step` (one index per sample) of each stored trajectory."""
        cfg, device, rows = self.flow_grpo, self.policy.device, torch.arange(len(step))
        latents = data["latents"]  # (B, T + 1, C, h, w)
        x, x_next = latents[rows, step].to(device), latents[rows, step + 1].to(device)
        sigmas = torch.cat([data["timesteps"], data["timesteps"].new_zeros(len(step), 1)], dim=1)  # (B, T + 1)
        sigma, sigma_next, sigma_max = sigmas[rows, step], sigmas[rows, step + 1], sigmas[:, 1]
        cond = (data["embeds"], data["pooled"])
        with self._autocast():
            with self.policy.adapter(THETA):
                v_theta = self.policy.guided_velocity(x, sigma.to(device), *cond, self.guidance_scale)
            step_of = {"noise_level": cfg.noise_level, "sigma_max": sigma_max.to(device)}
            _, mean, std = sde_step(v_theta, x, sigma.to(device), sigma_next.to(device), **step_of)
            ref_mean = None
            if cfg.beta > 0:
                with torch.no_grad(), self.policy.adapter(None):
                    v_ref = self.policy.guided_velocity(x, sigma.to(device), *cond, self.guidance_scale)
                _, ref_mean, _ = sde_step(v_ref, x, sigma.to(device), sigma_next.to(device), **step_of)
        log_prob = step_log_prob(x_next, mean, std, (sigma_next - sigma).to(device))
        return grpo_loss(log_prob, data["log_probs"][rows, step].to(device), data["advantages"].to(device),
                         clip_range=cfg.clip_range, adv_clip_max=cfg.adv_clip_max, mean=mean, ref_mean=ref_mean,
                         std=std, beta=cfg.beta)

    @torch.no_grad()
    def old_velocity(self, xt: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor, *,
                     versions: torch.Tensor) -> torch.Tensor:
        """v_old of each sample under the θ_old version that drew it (`versions`, one per sample)."""
        if bool((versions == self.version).all()):  # the synchronous schedule: one forward, as the reference does
            with self.policy.adapter(OLD):
                return self.policy.velocity(xt, t, embeds, pooled)
        v_old = torch.empty(xt.shape, dtype=torch.float32, device=xt.device)
        for version in versions.unique().tolist():
            index = (versions == version).nonzero().squeeze(1).to(xt.device)
            with self.policy.adapter(OLD if version == self.version else self._lagged(version)):
                v_old[index] = self.policy.velocity(xt[index], t[index], embeds[index], pooled[index])
        return v_old

    def _lagged(self, version: int) -> str:
        """Load θ_old of an earlier `version` into the LAGGED adapter (once per version change)."""
        if version not in self.old_versions:
            raise RuntimeError(
                f"a sample was drawn with θ_old version {version}, but the learner (at version {self.version}, "
                f"max_policy_lag {self.max_policy_lag}) holds versions {sorted(self.old_versions)}: the buffer "
                "let through a sample older than schedule.max_policy_lag, or the LearnerGroup was built with "
                "another max_policy_lag than the buffer")
        if self.lagged_version != version:
            self.policy.load_weights(self.old_versions[version], LAGGED)
            self.lagged_version = version
        return LAGGED

    def _keep_old_version(self) -> None:
        """Remember θ_old of the current version; forget versions no admissible sample can still carry."""
        if self.max_policy_lag == 0:
            return
        self.old_versions[self.version] = self.policy.get_weights(OLD)
        for version in [v for v in self.old_versions if v < self.version - self.max_policy_lag]:
            del self.old_versions[version]

    def _optimizer_step(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        if self.flow_grpo is None:  # NFT: a share of the collection times, per sample
            times = training_timesteps(data["timesteps"], cfg.timestep_fraction, self.generator)  # (n, T')
            pass_loss = self._loss
        else:  # Flow-GRPO: a share of the stored transitions, per sample (indices)
            steps = torch.arange(data["log_probs"].shape[1]).repeat(len(data["log_probs"]), 1)  # (n, T)
            times = training_timesteps(steps, self.flow_grpo.timestep_fraction, self.generator)  # (n, T')
            pass_loss = self._grpo_loss
        micro = [torch.arange(len(times))[i:i + cfg.micro_batch_size]
                 for i in range(0, len(times), cfg.micro_batch_size)]
        passes, sums = len(micro) * times.shape[1], {}
        self.optimizer.zero_grad(set_to_none=True)
        for m, index in enumerate(micro):
            for j in range(times.shape[1]):
                last = m == len(micro) - 1 and j == times.shape[1] - 1
                sync = contextlib.nullcontext() if last or self.world_size == 1 else self.policy.denoiser.no_sync()
                with sync:
                    loss, metrics = pass_loss({k: v[index] for k, v in data.items()}, times[index, j])
                    self.scaler.scale(loss / passes).backward()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) / passes
        self.scaler.unscale_(self.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, lr=cfg.lr, schedule=cfg.lr_schedule, decay_steps=self.lr_decay_steps,
                                        final_ratio=cfg.lr_final_ratio)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.theta.values()), cfg.max_grad_norm))
        if math.isfinite(grad_norm) and all(math.isfinite(v) for v in sums.values()):
            self.scaler.step(self.optimizer)
            self.step += 1
        else:  # gradients are synchronised, so every rank takes this branch together
            self.skipped_steps += 1
        self.scaler.update()
        return {**sums, "grad_norm": grad_norm}

    def update(self, batch: Batch) -> dict[str, Any]:
        """gradient_steps_per_update optimizer steps on this rank's shard, then θ_old ← d·θ_old + (1 − d)·θ."""
        start = time.perf_counter()
        data = self._shard(batch)
        chunks = torch.arange(len(data["x0"])).chunk(self.cfg.gradient_steps_per_update)
        steps = [self._optimizer_step({k: v[c] for k, v in data.items()}) for c in chunks]
        schedule = self.cfg.old_policy  # NFT's; Flow-GRPO samples on-policy: θ_old copies θ after every update
        decay = 0.0 if self.flow_grpo is not None else old_policy_decay(self.step, flat=schedule.flat,
                                                                         uprate=schedule.uprate, cap=schedule.cap)
        ema = eval_ema_decay(self.step, self.cfg.eval_ema_decay)
        with torch.no_grad():
            for key, old in self.old.items():
                old.mul_(decay).add_(self.theta[key].detach(), alpha=1 - decay)
                self.ema[key].mul_(ema).add_(self.theta[key].detach(), alpha=1 - ema)
        self.version += 1
        self._keep_old_version()
        metrics = {key: sum(s[key] for s in steps) / len(steps) for key in steps[0]}
        result = {**metrics, "lr": self.optimizer.param_groups[0]["lr"],
                  "old_decay": decay, "optimizer_step": self.step, "skipped_steps": self.skipped_steps,
                  "samples": len(data["x0"]), "lagged_samples": int((data["version"] < self.version - 1).sum()),
                  "seconds": time.perf_counter() - start}
        self.metrics.updated(result)
        return result

    # ---- weights -------------------------------------------------------------------------------------------
    def get_weights(self, which: str = OLD) -> dict[str, torch.Tensor]:
        """LoRA state of θ_old ('old'), θ ('theta') or the evaluation EMA of θ ('ema'), in peft's format."""
        if which not in ("old", "theta", "ema"):
            raise ValueError(f"weights {which!r}: choose 'old' (θ_old), 'theta' (θ) or 'ema' (EMA of θ)")
        if which == "ema":
            return {k: v.detach().cpu().clone() for k, v in self.ema.items()}
        return self.policy.get_weights(which)

    def publish(self, which: str = OLD) -> tuple[dict[str, np.ndarray], str]:
        """`get_weights(which)` as numpy arrays (Ray's zero-copy path) and their checksum; call with num_returns=2
        so the driver can check what each Sampler applied without fetching the weights."""
        weights = as_numpy(self.get_weights(which))
        return weights, weights_checksum(weights)

    def checksum(self) -> float:
        """Sum of |θ| + |θ_old|: equal on every rank when DDP keeps them in step (used by tests)."""
        return float(sum(p.detach().double().abs().sum() for p in [*self.theta.values(), *self.old.values()]))

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def state(self, with_weights: bool, with_history: bool = False) -> dict[str, Any]:
        """What a checkpoint keeps of this rank: step and RNG states; with_weights (rank 0) θ, θ_old, EMA, optimizer;
        with_history also the θ_old versions lagged samples may still need (a recovery continues the buffer, a
        resumed run does not)."""
        state: dict[str, Any] = {"step": self.step, "skipped_steps": self.skipped_steps, "rng": {
            "generator": self.generator.get_state(), "noise_generator": self.noise_generator.get_state(),
            "torch": torch.get_rng_state()}}
        if with_weights:  # the same on every rank: DDP keeps them in step
            state.update(theta=self.get_weights("theta"), old=self.get_weights("old"), ema=self.get_weights("ema"),
                         optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict())
            if with_history:
                state["old_versions"] = dict(self.old_versions)
        return state

    def update_and_state(self, batch: Batch, with_weights: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """`update`, then this rank's state with the θ_old history, in one task: a result that arrived has the state
        after it beside it, for the LearnerGroup to rebuild from if a rank dies later."""
        return self.update(batch), self.state(with_weights, with_history=True)

    def load_state(self, state: dict[str, Any], rng: dict[str, torch.Tensor] | None, version: int) -> None:
        """Restore rank 0's `state` on this rank, with this rank's `rng` (None: a rank the saved run did not have).

        θ_old resumes as `version`; earlier versions come back only from a state taken with_history (a recovery):
        a resumed run's buffer starts empty."""
        self.policy.load_weights(state["theta"], THETA)  # copies into the same Parameters the optimizer holds
        self.policy.load_weights(state["old"], OLD)
        self.version, self.old_versions, self.lagged_version = version, dict(state.get("old_versions", {})), None
        self._keep_old_version()
        with torch.no_grad():
            for key, value in state["ema"].items():
                self.ema[key].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.skipped_steps = int(state["step"]), int(state["skipped_steps"])
        if rng is not None:
            self.generator.set_state(rng["generator"])
            self.noise_generator.set_state(rng["noise_generator"])
            torch.set_rng_state(rng["torch"])
