"""Evaluation entry point: `python -m deploy.evaluate --dataset NAME [--checkpoint DIR|HUB_ID] [options]`.

Samples a prompt set on the sampler pool with a LoRA (our checkpoint's θ, any diffusers SD3 LoRA, or none: the base
policy), scores it on the reward service, and writes `metrics.json` (means overall and per tag) and `grid.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ray

from actors.evaluation import EvalResult, eval_groups, evaluate
from actors.prompts import read_prompts
from actors.sampler_pool import SamplerPool
from actors.scoring import GroupScorer
from configs.load import ConfigError, load_config
from configs.schema import Config
from deploy.report import save_grid
from deploy.runtime import start_ray, start_reward
from learner.checkpoint import LORA_FILE, read_lora

PROMPTS = Path("configs/prompts")
DATASETS = {  # dataset -> (prompt file, default scorer): the reference's evaluation sets and the shapes world's
    "geneval": ("geneval_test.jsonl", "geneval"),
    "ocr": ("ocr_test.txt", "ocr"),
    "pickscore": ("pickscore_test.txt", "pickscore"),
    "drawbench": ("drawbench_test.txt", "pickscore"),
    "shapes": ("shapes_test.jsonl", "shapes"),  # held-out meanings
    "shapes_train": ("shapes_train.jsonl", "shapes"),  # in-distribution: the training prompts at evaluation seeds
}
DEFAULT_CONFIG = "configs/tiny_cpu.yaml"
GRID_IMAGES = 64  # the grid shows the first prompts; metrics.json covers all


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="prompt set (configs/prompts/)")
    parser.add_argument("--checkpoint", help="a checkpoint (runs/<name>/checkpoints/step_NNNNN, its θ), a LoRA "
                        f"folder holding {LORA_FILE} (e.g. step_NNNNN/ema) or a hub id; none: the base policy")
    parser.add_argument("--policy", help="base pipeline folder or hub id (default: the config's policy.pretrained)")
    parser.add_argument("--config", help="preset for policy, sampler, reward and eval settings (default: the "
                        f"checkpoint's config.yaml, else {DEFAULT_CONFIG})")
    parser.add_argument("--scorer", help="score with this scorer instead of the dataset's default")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: eval.guidance_scale)")
    parser.add_argument("--num-steps", type=int, help="solver steps (default: eval.num_steps)")
    parser.add_argument("--num-prompts", type=int, help="evaluate the first N prompts (default: all)")
    parser.add_argument("--images-per-prompt", type=int, help="images per prompt (default: eval.images_per_prompt)")
    parser.add_argument("--reward-url", action="append", default=[], help="a running reward server (repeatable); "
                        "default: start reward.replicas servers as Ray actors")
    parser.add_argument("--out", help="output folder (default: <checkpoint>/eval_<dataset>, else runs/eval/...)")
    return parser.parse_args(argv)


def locate(checkpoint: str | None) -> tuple[str | None, Path | None, int]:
    """(LoRA source, the run config that trained it, its policy version) for --checkpoint."""
    if checkpoint is None:
        return None, None, 0
    path = Path(checkpoint)
    if (path / "state.json").is_file():  # ours: θ in theta/, the resolved config beside it
        version = json.loads((path / "state.json").read_text())["version"]
        return str(path / "theta"), path / "config.yaml", int(version)
    if (path / LORA_FILE).is_file():  # a LoRA folder, maybe theta/, old/ or ema/ of one of our checkpoints
        config = path.parent / "config.yaml"
        return str(path), config if config.is_file() else None, 0
    if path.exists() or checkpoint.startswith((".", "/")):
        raise ValueError(f"--checkpoint {checkpoint!r} holds neither state.json (a checkpoint of ours) nor "
                         f"{LORA_FILE} (a diffusers LoRA)")
    return checkpoint, None, 0  # a hub id


def build_config(args: argparse.Namespace, lora_source: str | None, run_config: Path | None):
    """The run config with the dataset's prompts and scorer, the LoRA's shape and the command-line options."""
    prompt_file, default_scorer = DATASETS[args.dataset]
    scorer = args.scorer or default_scorer
    path = args.config or run_config or DEFAULT_CONFIG
    base = load_config(path)
    overrides = [f"prompts.test={PROMPTS / prompt_file}", f"reward.weights={json.dumps({scorer: 1.0})}",
                 f"reward.scorer_args={json.dumps({k: v for k, v in base.reward.scorer_args.items() if k == scorer})}"]
    weights = None
    if lora_source is not None:
        weights, lora = read_lora(lora_source)
        overrides += [f"policy.lora.rank={lora.rank}", f"policy.lora.alpha={lora.alpha}",
                      f"policy.lora.target_modules={json.dumps(list(lora.target_modules))}"]
    options = {"policy.pretrained": args.policy, "eval.guidance_scale": args.guidance_scale,
               "eval.num_steps": args.num_steps, "eval.num_prompts": args.num_prompts,
               "eval.images_per_prompt": args.images_per_prompt}
    overrides += [f"{key}={value}" for key, value in options.items() if value is not None]
    if args.reward_url:
        overrides += ["reward.replicas=0", f"reward.urls={json.dumps(args.reward_url)}"]
    return load_config(path, overrides), weights


def run_evaluation(cfg: Config, weights: dict | None, version: int) -> EvalResult:
    """Start reward servers and samplers, evaluate the prompts of cfg.prompts.test, stop them again."""
    urls, replicas = start_reward(cfg.reward, local=not os.environ.get("RAY_ADDRESS"))
    scorer = ray.remote(GroupScorer).options(num_cpus=0, max_concurrency=64).remote(cfg.reward, urls, replicas)
    pool = None
    try:
        pool = SamplerPool(cfg.policy, cfg.sampler, max_inflight=1)
        groups = eval_groups(read_prompts(cfg.prompts.test), images_per_prompt=cfg.eval.images_per_prompt,
                             num_prompts=cfg.eval.num_prompts)
        return evaluate(pool, scorer, groups, ray.put(weights) if weights is not None else None, version, cfg.eval,
                        name=cfg.prompts.test)
    finally:
        if pool is not None:
            pool.shutdown()
        for actor in (scorer, *replicas):
            ray.kill(actor)


def write_report(out: Path, result: EvalResult, cfg: Config, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {"dataset": args.dataset, "checkpoint": args.checkpoint, "policy": cfg.policy.pretrained,
              "version": result.version, "prompts": cfg.prompts.test, "scorers": list(cfg.reward.weights),
              "num_prompts": len(result.captions) + result.failed_groups,
              "images_per_prompt": cfg.eval.images_per_prompt, "solver": cfg.eval.solver,
              "num_steps": cfg.eval.num_steps, "guidance_scale": cfg.eval.guidance_scale,
              "means": result.means, "intervals95": result.intervals, "images": result.num_images,
              "per_tag": result.per_tag, "failed_groups": result.failed_groups}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    save_grid(out / "grid.png", result.images[:GRID_IMAGES], result.captions[:GRID_IMAGES])
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        lora_source, run_config, version = locate(args.checkpoint)
        cfg, weights = build_config(args, lora_source, run_config)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
    elif lora_source and Path(args.checkpoint).is_dir():  # beside the checkpoint it evaluates
        out = Path(args.checkpoint) / f"eval_{args.dataset}"
    else:
        out = Path("runs/eval") / f"{args.dataset}_{(args.checkpoint or 'base').replace('/', '--')}"
    if not ray.is_initialized():
        start_ray()
    result = run_evaluation(cfg, weights, version)
    report = write_report(out, result, cfg, args)
    print(json.dumps({"means": report["means"], "intervals95": report["intervals95"],
                      "failed_groups": report["failed_groups"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
