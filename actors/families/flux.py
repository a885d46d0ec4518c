"""FLUX.1 (`FluxPipeline`): CLIP pooled vector + T5 token states, 2×2-packed latents, resolution-dependent shift.

x0 stays (C, h, w) in the sampler and the learner; `velocity` packs it into (h/2 · w/2) tokens of 4C, calls the
transformer with t in [0, 1] (it multiplies by 1000 itself), the image and text position ids, and, for a
guidance-distilled model (FLUX.1-dev, `guidance_embeds`), the embedded guidance `policy.embedded_guidance`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from actors.families.base import (
    DTYPES,
    Conditioning,
    Family,
    check_components,
    dynamic_sigmas,
    load_kwargs,
    pack_2x2,
    read_scheduler,
    to_uint8,
    unpack_2x2,
)
from configs.schema import PolicyConfig

# Flow-GRPO's FLUX.1-dev recipe adapts the attention projections of both block kinds (as for SD3).
FLUX_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def image_ids(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h/2 · w/2, 3) position ids of the packed tokens: (0, row, column), as FluxPipeline builds them."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


class Flux(Family):
    pipeline_class = "FluxPipeline"
    required = ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")
    lora_targets = FLUX_LORA_TARGETS

    def __init__(self, *, tokenizers, text_encoders, transformer, vae, scheduler: dict, cfg: PolicyConfig):
        super().__init__(transformer=transformer, frozen=[*text_encoders, vae], scheduler=scheduler, cfg=cfg)
        self.tokenizers, self.text_encoders, self.vae = tokenizers, text_encoders, vae

    @classmethod
    def from_pretrained(cls, cfg: PolicyConfig, index: dict[str, Any]) -> Flux:
        check_components(cls, cfg, index)
        dtype, kw = DTYPES[cfg.dtype], load_kwargs(cfg)
        tokenizers = [AutoTokenizer.from_pretrained(cfg.pretrained, subfolder=n, **kw)
                      for n in ("tokenizer", "tokenizer_2")]
        encoders = [CLIPTextModel.from_pretrained(cfg.pretrained, subfolder="text_encoder", torch_dtype=dtype, **kw),
                    T5EncoderModel.from_pretrained(cfg.pretrained, subfolder="text_encoder_2", torch_dtype=dtype, **kw)]
        return cls(tokenizers=tokenizers, text_encoders=encoders,
                   transformer=FluxTransformer2DModel.from_pretrained(cfg.pretrained, subfolder="transformer",
                                                                      torch_dtype=dtype, **kw),
                   vae=AutoencoderKL.from_pretrained(cfg.pretrained, subfolder="vae", torch_dtype=dtype, **kw),
                   scheduler=read_scheduler(cfg), cfg=cfg)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """(T5 states (B, max_sequence_length, D), CLIP pooled (B, D_clip)), as FluxPipeline.encode_prompt."""
        (clip_tok, t5_tok), (clip, t5) = self.tokenizers, self.text_encoders
        device = next(self.transformer.parameters()).device
        ids = clip_tok(prompts, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids.to(device)
        pooled = clip(ids, output_hidden_states=False).pooler_output  # (B, D_clip)
        ids = t5_tok(prompts, padding="max_length", max_length=self.cfg.max_sequence_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)
        embeds = t5(ids, output_hidden_states=False)[0]  # (B, L, D)
        return embeds.float(), pooled.float()

    def velocity(self, denoiser, xt, t, embeds, extra):
        dtype, (b, _, h, w) = self.dtype, xt.shape
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.cfg.embedded_guidance, dtype=torch.float32, device=xt.device)
        v = denoiser(hidden_states=pack_2x2(xt.to(dtype)), timestep=t.float(), guidance=guidance,
                     pooled_projections=extra.to(dtype), encoder_hidden_states=embeds.to(dtype),
                     txt_ids=torch.zeros(embeds.shape[1], 3, device=xt.device), img_ids=image_ids(h, w, xt.device),
                     return_dict=False)[0]  # (B, h/2 · w/2, 4C)
        return unpack_2x2(v.float(), h, w)

    def _factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self) -> tuple[int, ...]:
        """(C, h, w), h = w = resolution / VAE factor, even (2×2 packing)."""
        size = 2 * (self.cfg.resolution // (self._factor() * 2))
        return (self.transformer.config.in_channels // 4, size, size)

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        """Resolution-dependent: μ from the packed token count; `shift` (SD3's static one) does not apply."""
        _, h, w = self.latent_shape()
        return dynamic_sigmas(self.scheduler, num_steps, (h // 2) * (w // 2))

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        latents = x0.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return to_uint8(self.vae.decode(latents, return_dict=False)[0])
