"""Pretrain the embedded tiny policy on the shapes world: `python -m deploy.pretrain [--out DIR] [--steps N]`.

Flow matching (xt = (1 − t)·x0 + t·ε, target v = ε − x0) of a tiny SD3-architecture model and its text encoders
on rendered scenes whose captions are deliberately noisy, so the base follows prompts only partly. Held-out test
prompts are never shown. Saves a diffusers-format pipeline that `Policy.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import SD3Transformer2DModel
from tqdm import tqdm
from transformers import AutoTokenizer, CLIPTextModelWithProjection

from actors.families.sd3 import encode_prompts
from actors.prompts import read_prompts
from actors.shapes_world import VOCABULARY, canonical_form, sample_captioned_images
from actors.tiny_policy import TinySpec, build_text_encoder, build_tokenizer, build_transformer, save_tiny_pipeline


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="configs/policies/tiny_shapes", help="pipeline directory to write")
    parser.add_argument("--test-prompts", default="configs/prompts/shapes_test.jsonl", help="held-out prompts")
    parser.add_argument("--steps", type=int, default=4000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--noise", type=float, default=0.5, help="share of captions with one thing wrong")
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions (for CFG)")
    parser.add_argument("--dataset-size", type=int, default=40000, help="captioned images rendered up front")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2, help="attention heads of 64 channels (width = 64 · heads)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when there is one)")
    parser.add_argument("--init", default=None, help="continue from a saved tiny pipeline instead of random weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=1000, help="also save the pipeline every N steps")
    parser.add_argument("--ema", type=float, default=0.999, help="decay of the weight average that is saved (0: none)")
    return parser.parse_args(argv)


def make_dataset(args: argparse.Namespace, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Noisy-captioned renders, leaving out every scene of a held-out meaning and every held-out caption."""
    test = read_prompts(args.test_prompts)
    held_out, held_out_forms = {r.prompt for r in test}, {canonical_form(r.metadata) for r in test}
    rng = np.random.default_rng(args.seed)
    images, captions = [], []
    while len(images) < args.dataset_size:
        for pair in sample_captioned_images(rng, 1000, args.noise, resolution):
            if canonical_form(pair.metadata) in held_out_forms or pair.caption in held_out:
                continue
            images.append(pair.image)
            captions.append(pair.caption if rng.random() >= args.caption_dropout else "")
    x0 = torch.from_numpy(np.stack(images[:args.dataset_size])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x0, captions[:args.dataset_size]  # x0: (N, 3, H, W) in [-1, 1]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch sees no CUDA device; pass --device cpu, or install a CUDA build "
                         f"of torch (README, 'Install on a GPU machine')")
    return device


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = TinySpec(patch_size=args.patch_size, num_layers=args.layers, num_attention_heads=args.heads)
    start = time.time()
    x0_all, captions = make_dataset(args, spec.resolution)
    print(f"rendered {len(captions)} captioned scenes in {time.time() - start:.0f}s")
    if args.init:  # warm start: the same components, loaded the way Policy loads them
        tokenizer = AutoTokenizer.from_pretrained(args.init, subfolder="tokenizer")
        encoders = [CLIPTextModelWithProjection.from_pretrained(args.init, subfolder=name)
                    for name in ("text_encoder", "text_encoder_2")]
        transformer = SD3Transformer2DModel.from_pretrained(args.init, subfolder="transformer")
    else:
        tokenizer = build_tokenizer(list(VOCABULARY), spec.max_tokens)
        encoders = [build_text_encoder(tokenizer, spec, args.seed), build_text_encoder(tokenizer, spec, args.seed + 1)]
        transformer = build_transformer(spec, args.seed + 2)
    modules = torch.nn.ModuleList([*encoders, transformer]).to(device).train()
    print(f"pretraining {sum(p.numel() for p in modules.parameters()) / 1e6:.2f}M parameters on {device}")
    optimizer = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    ema = torch.optim.swa_utils.AveragedModel(
        modules, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)) if args.ema else None
    generator = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), desc="pretrain", dynamic_ncols=True)
    smoothed_loss = None
    def save() -> Path:
        saved = ema.module if ema is not None else modules  # the weight average is what gets saved
        out = save_tiny_pipeline(args.out, tokenizer=tokenizer, text_encoder=saved[0], text_encoder_2=saved[1],
                                 transformer=saved[2], shift=spec.shift)
        (out / "pretrain.json").write_text(json.dumps(
            {**vars(args), "device": str(device), "steps_done": step + 1, "final_loss": smoothed_loss,
             "seconds": round(time.time() - start)},
            indent=2))
        return out

    for step in bar:
        index = torch.randint(len(captions), (args.batch_size,), generator=generator)
        # Drawn on the CPU generator whatever the device, so a seed gives the same batches everywhere.
        x0 = x0_all[index].to(device)  # (B, 3, H, W)
        t = torch.sigmoid(torch.randn(args.batch_size, generator=generator)).to(device)  # SD3's logit-normal timesteps
        noise = torch.randn(x0.shape, generator=generator).to(device)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        embeds, pooled = encode_prompts([captions[i] for i in index.tolist()], [tokenizer, tokenizer], encoders, None,
                                        joint_dim=transformer.config.joint_attention_dim, max_sequence_length=0,
                                        device=device)
        v = transformer(hidden_states=xt, timestep=1000 * t, encoder_hidden_states=embeds,
                        pooled_projections=pooled, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(modules)
        loss_value = loss.item()
        smoothed_loss = loss_value if smoothed_loss is None else 0.98 * smoothed_loss + 0.02 * loss_value
        bar.set_postfix(loss=f"{smoothed_loss:.4f}")
        if args.save_every and (step + 1) % args.save_every == 0:
            save()
    out = save()
    print(f"saved the tiny policy to {out} (loss {smoothed_loss:.4f}, {time.time() - start:.0f}s); "
          f"evaluate it with: python -m deploy.evaluate --policy {out} --dataset shapes")
    return out


if __name__ == "__main__":
    main()
