"""Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`), and the embedded tiny policy of the same architecture.

Conditioning: CLIP-L ⊕ CLIP-G penultimate states (then T5 tokens) and the pooled CLIP projections. Latents are
(C, h, w), unpacked; the transformer takes 1000·t; the schedule is the static shift of `sampler.shift`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

from actors.families.base import DTYPES, Conditioning, Family, check_components, load_kwargs, read_scheduler, to_uint8
from actors.solvers import sigma_schedule
from configs.schema import SD3_LORA_TARGETS, PolicyConfig


def encode_prompts(prompts: list[str], tokenizers, text_encoders, t5, *, joint_dim: int, max_sequence_length: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-L ⊕ CLIP-G penultimate hidden states (then T5 tokens along the sequence), pooled CLIP projections.

    As diffusers' SD3 pipeline, except that without a T5 encoder no all-zero T5 tokens are appended.
    """
    states, pooled = [], []
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    clip = torch.cat(states, dim=-1)  # (B, L, D_l + D_g)
    embeds = F.pad(clip, (0, joint_dim - clip.shape[-1]))  # (B, L, joint_dim)
    if t5 is not None:
        tokenizer, encoder = t5
        ids = tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        embeds = torch.cat([embeds, encoder(ids)[0]], dim=1)  # (B, L + L_t5, joint_dim)
    return embeds.float(), torch.cat(pooled, dim=-1).float()


class SD3(Family):
    pipeline_class = "StableDiffusion3Pipeline"
    required = ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    lora_targets = SD3_LORA_TARGETS

    def __init__(self, *, tokenizers, text_encoders, t5, transformer, vae, scheduler: dict, cfg: PolicyConfig):
        super().__init__(transformer=transformer, frozen=[*text_encoders, t5 and t5[1], vae], scheduler=scheduler,
                         cfg=cfg)
        self.tokenizers, self.text_encoders, self.t5, self.vae = tokenizers, text_encoders, t5, vae

    @classmethod
    def from_pretrained(cls, cfg: PolicyConfig, index: dict[str, Any]) -> SD3:
        check_components(cls, cfg, index)
        dtype, kw = DTYPES[cfg.dtype], load_kwargs(cfg)
        tokenizers = [AutoTokenizer.from_pretrained(cfg.pretrained, subfolder=n, **kw)
                      for n in ("tokenizer", "tokenizer_2")]
        encoders = [CLIPTextModelWithProjection.from_pretrained(cfg.pretrained, subfolder=n, torch_dtype=dtype, **kw)
                    for n in ("text_encoder", "text_encoder_2")]
        t5 = None
        if index.get("text_encoder_3", [None])[0] is not None:
            t5 = (AutoTokenizer.from_pretrained(cfg.pretrained, subfolder="tokenizer_3", **kw),
                  T5EncoderModel.from_pretrained(cfg.pretrained, subfolder="text_encoder_3", torch_dtype=dtype, **kw))
        vae = AutoencoderKL.from_pretrained(cfg.pretrained, subfolder="vae", torch_dtype=dtype, **kw) \
            if index.get("vae", [None])[0] is not None else None
        transformer = SD3Transformer2DModel.from_pretrained(cfg.pretrained, subfolder="transformer",
                                                            torch_dtype=dtype, **kw)
        return cls(tokenizers=tokenizers, text_encoders=encoders, t5=t5, transformer=transformer, vae=vae,
                   scheduler=read_scheduler(cfg), cfg=cfg)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """(embeds (B, L, D), pooled (B, D))."""
        return encode_prompts(prompts, self.tokenizers, self.text_encoders, self.t5,
                              joint_dim=self.transformer.config.joint_attention_dim,
                              max_sequence_length=self.cfg.max_sequence_length,
                              device=next(self.transformer.parameters()).device)

    def velocity(self, denoiser, xt, t, embeds, extra):
        dtype = self.dtype
        # the timestep stays float32: in bf16, 1000·t rounds (913.35 -> 916) while xt was noised with the exact t
        v = denoiser(hidden_states=xt.to(dtype), timestep=1000.0 * t.float(), encoder_hidden_states=embeds.to(dtype),
                     pooled_projections=extra.to(dtype), return_dict=False)[0]
        return v.float()

    def latent_shape(self) -> tuple[int, ...]:
        """(C, h, w): latents when a VAE is present, else pixels."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        size = self.cfg.resolution // factor
        return (self.transformer.config.in_channels, size, size)

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        return sigma_schedule(num_steps, shift)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        if self.vae is not None:
            latents = x0.to(self.vae.dtype) / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
            x0 = self.vae.decode(latents, return_dict=False)[0].float()
        return to_uint8(x0)
