"""The model-family contract: what the samplers and the learner need from a diffusion model, and nothing else.

A `Family` holds one pipeline's frozen parts and its transformer and answers six questions: how prompts become
conditioning (`encode`), what velocity the transformer gives at (xt, t, conditioning) (`velocity`: packing and
the timestep convention live here), what x0 looks like (`latent_shape`, any number of dims), which sigmas a
solver walks (`sigmas`: static or resolution-dependent shift), how x0 becomes pixels (`decode`), and which
stock diffusers pipeline reads its LoRA (`pipeline_class`, `lora_targets`). Adapters live in actors.policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from configs.schema import PolicyConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Conditioning of a batch of prompts, the same two tensors in every family, one row per prompt:
# (embeds (B, L, D), extra (B, ...)); extra is the pooled text vector (SD3, FLUX) or the token mask (Qwen-Image).
Conditioning = tuple[torch.Tensor, torch.Tensor]


class Family:
    """One model family. Subclasses set the class variables and implement the five methods below."""

    pipeline_class: ClassVar[str]  # `_class_name` of the diffusers pipeline in model_index.json
    required: ClassVar[tuple[str, ...]]  # model_index.json components the family cannot do without
    lora_targets: ClassVar[tuple[str, ...]]  # the transformer modules the family's peer recipes adapt

    def __init__(self, *, transformer: torch.nn.Module, frozen: list[torch.nn.Module | None], scheduler: dict,
                 cfg: PolicyConfig):
        self.transformer, self.cfg = transformer, cfg
        self.frozen = [module for module in frozen if module is not None]  # text encoders, VAE
        self.scheduler = scheduler  # the pipeline's scheduler config: its shift settings

    @classmethod
    def from_pretrained(cls, cfg: PolicyConfig, index: dict[str, Any]) -> Family:
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def velocity(self, denoiser: torch.nn.Module, xt: torch.Tensor, t: torch.Tensor,
                 embeds: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """v ≈ ε − x0 at t in [0, 1] (t = 1 noise), in x0's layout; `denoiser` is the transformer or its DDP wrapper."""
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one x0 (no batch dim), as the sampler draws noise and the learner stores it."""
        raise NotImplementedError

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        """(num_steps + 1,) float32 from at most 1 down to 0: the stock pipeline's schedule at this resolution."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """x0 (B, ...) → uint8 images (B, H, W, 3)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype


# ---- pieces two families share -------------------------------------------------------------------------------
def check_components(cls: type[Family], cfg: PolicyConfig, index: dict[str, Any]) -> None:
    missing = [name for name in cls.required if name not in index or index[name][0] is None]
    if missing:
        raise ValueError(f"policy.pretrained {cfg.pretrained!r} lacks the {missing} component(s) a "
                         f"{cls.pipeline_class} needs")


def load_kwargs(cfg: PolicyConfig) -> dict[str, Any]:
    return {"revision": cfg.revision}


def read_scheduler(cfg: PolicyConfig) -> dict:
    return dict(FlowMatchEulerDiscreteScheduler.load_config(cfg.pretrained, subfolder="scheduler",
                                                            revision=cfg.revision))


def dynamic_sigmas(scheduler: dict, num_steps: int, image_seq_len: int) -> torch.Tensor:
    """FLUX / Qwen-Image: linspace(1, 1/n, n) shifted by μ, linear in the image's token count, as their pipelines
    compute it (`calculate_shift`), and passed through the pipeline's own scheduler so every option it has
    (exponential time shift, shift_terminal) applies exactly; then a final 0."""
    base_len, max_len = scheduler.get("base_image_seq_len", 256), scheduler.get("max_image_seq_len", 4096)
    base_shift, max_shift = scheduler.get("base_shift", 0.5), scheduler.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    mu = image_seq_len * slope + base_shift - slope * base_len
    stepper = FlowMatchEulerDiscreteScheduler.from_config(scheduler)
    stepper.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    return stepper.sigmas.float().cpu()  # (num_steps + 1,)


def pack_2x2(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2 · w/2, 4C): 2×2 patches as tokens, as FluxPipeline / QwenImagePipeline pack."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack_2x2`: (B, h/2 · w/2, 4C) → (B, C, h, w)."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
