"""`python -m bench.stock_pipeline --checkpoint runs/tiny_cpu/checkpoints/step_NNNNN [--steps 40] [--out DIR]`:
the solver-agnostic check. A run's θ, loaded with `load_lora_weights` into a stock diffusers
`StableDiffusion3Pipeline` and sampled by that pipeline's own `FlowMatchEulerDiscreteScheduler` at another step
count than training used, should keep the lift the run measured with its own solver.

Both evaluation sets of the checkpoint's config (the same rows and noise seeds as the run's own evaluations) are
sampled twice by the stock pipeline: the base, then the base with θ. Images are scored in-process by the `shapes`
scorer; each mean carries its 95% interval (actors.evaluation.interval95). Written: `stock_pipeline.json`.

One departure from a bare `pipe(prompt=...)`: the stock SD3 text path appends `tokenizer_max_length` all-zero T5
tokens when a pipeline has no T5 encoder, which the tiny base never saw in pretraining; the conditioning is
therefore computed by the policy's encoder (CLIP-L ⊕ CLIP-G, no T5 tokens) from the pipeline's own tokenizers and
text encoders and passed as `prompt_embeds` / `pooled_prompt_embeds`. The scheduler, the denoising loop and the
LoRA loading are the stock pipeline's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from actors.evaluation import interval95
from actors.families.sd3 import encode_prompts
from actors.prompts import PromptGroup
from configs.load import load_config
from configs.schema import Config
from deploy.runtime import eval_sets
from reward_service.scorers.shapes import ShapesScorer


def load_stock(pretrained: str, lora_dir: str | None):
    """The stock pipeline of the tiny policy's folder (pixel space: no VAE, no T5), with a LoRA when given."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(pretrained, text_encoder_3=None, tokenizer_3=None, vae=None)
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(pipe, groups: list[PromptGroup], *, steps: int, resolution: int, batch: int = 64) -> np.ndarray:
    """Every image of `groups` (uint8, (N, H, W, 3)), each from the noise of its own evaluation seed."""
    rows = [(g.prompt, seed) for g in groups for seed in g.seeds]
    channels = pipe.transformer.config.in_channels
    images = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        embeds, pooled = encode_prompts(
            [p for p, _ in chunk], [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2],
            None, joint_dim=pipe.transformer.config.joint_attention_dim, max_sequence_length=0, device=pipe.device)
        latents = torch.stack([torch.randn(channels, resolution, resolution,
                                           generator=torch.Generator().manual_seed(seed)) for _, seed in chunk])
        x0 = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, latents=latents, num_inference_steps=steps,
                  guidance_scale=1.0, height=resolution, width=resolution, output_type="latent").images
        images.append(((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(images)


def score(groups: list[PromptGroup], images: np.ndarray, key: str = "shapes_strict") -> dict[str, float]:
    prompts = [g.prompt for g in groups for _ in g.seeds]
    metadata = [g.metadata for g in groups for _ in g.seeds]
    values = ShapesScorer().score(images, prompts, metadata)[key]
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for prompt, value in zip(prompts, values, strict=True):
        by_prompt[prompt].append(value)
    return {"mean": float(np.mean(values)), "interval": interval95(by_prompt), "images": len(values)}


def check(cfg: Config, lora_dir: str, *, steps: int, base: dict | None = None) -> dict:
    """Stock-pipeline strict score of the base (unless given) and of the base + `lora_dir`, per evaluation set."""
    sets = eval_sets(cfg)
    result = {"steps": steps, "scheduler": "FlowMatchEulerDiscreteScheduler (the pipeline's own)", "sets": {}}
    if base is None:
        pipe = load_stock(cfg.policy.pretrained, None)
        base = {name: score(groups, sample(pipe, groups, steps=steps, resolution=cfg.policy.resolution))
                for name, groups in sets.items()}
    pipe = load_stock(cfg.policy.pretrained, lora_dir)
    for name, groups in sets.items():
        after = score(groups, sample(pipe, groups, steps=steps, resolution=cfg.policy.resolution))
        result["sets"][name] = {"before": base[name], "after": after,
                                "lift": after["mean"] - base[name]["mean"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stock_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="runs/<name>/checkpoints/step_NNNNN (its θ is used)")
    parser.add_argument("--steps", type=int, default=40, help="Euler steps of the stock scheduler (default 40)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="folder for stock_pipeline.json (default: the checkpoint folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.num_prompts=20")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "theta").is_dir() or not (checkpoint / "config.yaml").is_file():
        print(f"error: {checkpoint} is not a checkpoint folder (theta/ and config.yaml expected)", file=sys.stderr)
        return 2
    cfg = load_config(checkpoint / "config.yaml", args.overrides)
    result = {"checkpoint": str(checkpoint), **check(cfg, str(checkpoint / "theta"), steps=args.steps)}
    out = Path(args.out) if args.out else checkpoint
    out.mkdir(parents=True, exist_ok=True)
    (out / "stock_pipeline.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["sets"].items():
        b, a = s["before"], s["after"]
        print(f"stock pipeline, Euler {args.steps} steps: {name} shapes_strict: {b['mean']:.3f} ± {b['interval']:.3f}"
              f" -> {a['mean']:.3f} ± {a['interval']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
