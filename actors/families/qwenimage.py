"""Qwen-Image (`QwenImagePipeline`): Qwen2.5-VL text states with their token mask, its own video-style VAE,
2×2-packed latents and a resolution-dependent shift.

Prompts go through the pipeline's chat template; the template's first `DROP_TOKENS` tokens are dropped, as the
pipeline does, and the states are padded (mask 0) or cut to `policy.max_sequence_length` so every group's
conditioning has one shape. x0 is (C, h, w); the VAE's frame axis is added only to decode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

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

TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")  # QwenImagePipeline.prompt_template_encode
DROP_TOKENS = 34  # QwenImagePipeline.prompt_template_encode_start_idx: the system part of the template
MAX_TOKENS = 1024  # QwenImagePipeline.tokenizer_max_length
# DiffusionNFT's and Flow-GRPO's Qwen-Image recipes adapt the attention projections of the MMDiT blocks.
QWEN_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


class QwenImage(Family):
    pipeline_class = "QwenImagePipeline"
    required = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
    lora_targets = QWEN_LORA_TARGETS

    def __init__(self, *, tokenizer, text_encoder, transformer, vae, scheduler: dict, cfg: PolicyConfig):
        super().__init__(transformer=transformer, frozen=[text_encoder, vae], scheduler=scheduler, cfg=cfg)
        self.tokenizer, self.text_encoder, self.vae = tokenizer, text_encoder, vae
        if cfg.max_sequence_length > MAX_TOKENS:
            raise ValueError(f"policy.max_sequence_length ({cfg.max_sequence_length}) cannot exceed Qwen-Image's "
                             f"{MAX_TOKENS}")

    @classmethod
    def from_pretrained(cls, cfg: PolicyConfig, index: dict[str, Any]) -> QwenImage:
        check_components(cls, cfg, index)
        dtype, kw = DTYPES[cfg.dtype], load_kwargs(cfg)
        return cls(tokenizer=AutoTokenizer.from_pretrained(cfg.pretrained, subfolder="tokenizer", **kw),
                   text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(
                       cfg.pretrained, subfolder="text_encoder", torch_dtype=dtype, **kw),
                   transformer=QwenImageTransformer2DModel.from_pretrained(
                       cfg.pretrained, subfolder="transformer", torch_dtype=dtype, **kw),
                   vae=AutoencoderKLQwenImage.from_pretrained(cfg.pretrained, subfolder="vae", torch_dtype=dtype, **kw),
                   scheduler=read_scheduler(cfg), cfg=cfg)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """(states (B, L, D), mask (B, L) int64) with L = max_sequence_length, as QwenImagePipeline.encode_prompt
        computes them, padded further with zero states and mask 0."""
        device = next(self.transformer.parameters()).device
        tokens = self.tokenizer([TEMPLATE.format(p) for p in prompts], max_length=MAX_TOKENS + DROP_TOKENS,
                                padding=True, truncation=True, return_tensors="pt").to(device)
        states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                   output_hidden_states=True).hidden_states[-1]  # (B, L_tokens, D)
        length = self.cfg.max_sequence_length
        embeds = states.new_zeros(len(prompts), length, states.shape[-1])  # (B, L, D)
        mask = torch.zeros(len(prompts), length, dtype=torch.long, device=device)  # (B, L)
        for i, (row, keep) in enumerate(zip(states, tokens.attention_mask.bool(), strict=True)):
            kept = row[keep][DROP_TOKENS:][:length]  # the prompt's own tokens (and the template's tail)
            embeds[i, :len(kept)], mask[i, :len(kept)] = kept, 1
        return embeds.float(), mask

    def velocity(self, denoiser, xt, t, embeds, extra):
        dtype, (b, _, h, w) = self.dtype, xt.shape
        guidance = None  # Qwen-Image is not guidance-distilled; a future distilled variant takes the embedded value
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.cfg.embedded_guidance, dtype=torch.float32, device=xt.device)
        v = denoiser(hidden_states=pack_2x2(xt.to(dtype)), timestep=t.float(), guidance=guidance,
                     encoder_hidden_states=embeds.to(dtype), encoder_hidden_states_mask=extra,
                     img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]  # (B, h/2 · w/2, 4C)
        return unpack_2x2(v.float(), h, w)

    def latent_shape(self) -> tuple[int, ...]:
        """(C, h, w), h = w = resolution / VAE factor, even (2×2 packing)."""
        factor = 2 ** len(self.vae.temperal_downsample)
        size = 2 * (self.cfg.resolution // (factor * 2))
        return (self.transformer.config.in_channels // 4, size, size)

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        """Resolution-dependent: μ from the packed token count; `shift` (SD3's static one) does not apply."""
        _, h, w = self.latent_shape()
        return dynamic_sigmas(self.scheduler, num_steps, (h // 2) * (w // 2))

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(x0.device, self.vae.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(x0.device,
                                                                                                  self.vae.dtype)
        latents = x0.to(self.vae.dtype).unsqueeze(2) / inverse_std + mean  # (B, C, 1, h, w): one frame
        return to_uint8(self.vae.decode(latents, return_dict=False)[0][:, :, 0])
