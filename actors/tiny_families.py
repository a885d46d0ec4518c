"""Tiny random-weight FLUX.1 and Qwen-Image pipelines built from configs and saved in their diffusers layout.

What the family tests load through `Policy.from_pretrained` and the stock pipelines, and what a few-update run on
CPU can point `policy.pretrained` at: `python -m actors.tiny_families flux DIR` (or `qwenimage DIR`). Word-level
tokenizers over the shapes vocabulary stand in for CLIP / T5 / Qwen2 tokenizers (there is no model hub here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    T5Config,
    T5EncoderModel,
)

from actors.families.qwenimage import TEMPLATE
from actors.shapes_world import VOCABULARY
from actors.tiny_policy import build_tokenizer

# FLUX.1-dev's scheduler settings (resolution-dependent μ between base_shift and max_shift).
FLUX_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                  "max_image_seq_len": 4096, "shift": 3.0}
# Qwen-Image's scheduler settings as we recall its hub config (not checked here: no hub): exponential time shift,
# μ between 0.5 and 0.9 over 256..8192 tokens, and the schedule stretched to end at 0.02.
QWEN_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
                  "max_image_seq_len": 8192, "shift": 1.0, "shift_terminal": 0.02, "time_shift_type": "exponential"}


def create_tiny_flux(directory: str | Path, words: tuple[str, ...] = tuple(VOCABULARY), seed: int = 0) -> Path:
    """CLIP (width 32) + T5 (width 32), a 1 + 1 block guidance-distilled FluxTransformer2DModel, a 2× VAE with 4
    latent channels: 32 px images are 16×16 latents, 64 packed tokens."""
    tokenizer = build_tokenizer(list(words), max_tokens=16)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                        projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=16, **ids))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=4, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer, transformer=transformer)
    pipe.save_pretrained(directory)
    return Path(directory)


def create_tiny_qwenimage(directory: str | Path, words: tuple[str, ...] = tuple(VOCABULARY), seed: int = 0) -> Path:
    """A 2-layer Qwen2.5-VL text model (width 16), a 2-block QwenImageTransformer2DModel, Qwen-Image's VAE at
    4× with 4 latent channels (non-trivial latents_mean / latents_std): 32 px images are 8×8 latents, 16 tokens."""
    template_words = TEMPLATE.replace("{}", " ").split()
    tokenizer = build_tokenizer([*words, *template_words], max_tokens=2048)
    vocab = len(tokenizer) + 4  # + the vision special tokens the VL config names
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": vocab, "rope_theta": 1e6,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab, vision_start_token_id=vocab - 4, vision_end_token_id=vocab - 3,
        vision_token_id=vocab - 2, image_token_id=vocab - 2, video_token_id=vocab - 1)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.1, -0.1, 0.2, 0.0],
                                 latents_std=[0.5, 1.0, 2.0, 1.5])
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER), vae=vae,
                             text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(directory)
    return Path(directory)


BUILDERS = {"flux": create_tiny_flux, "qwenimage": create_tiny_qwenimage}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", choices=sorted(BUILDERS))
    parser.add_argument("directory")
    arguments = parser.parse_args()
    print(BUILDERS[arguments.family](arguments.directory))
