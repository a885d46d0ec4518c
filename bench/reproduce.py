"""`python -m bench.reproduce [--seeds 0,1,2] [--config configs/tiny_cpu.yaml] [--out DIR] [override ...]`:
`make run` once per seed, then the spread of its figures over seeds.

Each seed is a full `python -m deploy.train` run (its own process and Ray) with `run.seed` and `prompts.seed` set to
the seed, so the LoRA init, the prompt order and the training noise all change; the evaluation sets and their
seeds stay fixed. Writes, under --out (default bench/reproduce/): `results.json` (per seed and over seeds: before,
after and lift of each evaluation set, with each evaluation's 95% interval), `results.md`, and `learning.png`:
strict score against images sampled and against training wall-clock (evaluations left out), the mean over seeds
as a line and the seeds' range as a band.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETS = ("in-distribution", "held-out")
KEY = "shapes_strict"


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def training_clock(records: list[dict]) -> dict[int, float]:
    """Seconds of training at the end of each update: 0 when the first evaluation ends, evaluations taken out."""
    start = max((r["elapsed_s"] for r in records if r["kind"] == "eval" and r["step"] == 0), default=0.0)
    clock, eval_s, last = {0: 0.0}, 0.0, start
    for r in records:
        if r["kind"] == "eval" and r["step"] > 0:
            eval_s += r["elapsed_s"] - last
        if r["kind"] == "update":
            clock[r["step"]] = r["elapsed_s"] - start - eval_s
        last = r["elapsed_s"]
    return clock


def curve(records: list[dict], name: str, key: str = KEY) -> list[dict]:
    """One point per evaluation of set `name`: step, images sampled, training seconds, score and its interval."""
    clock = training_clock(records)
    sampled = {r["step"]: r["images_sampled"] for r in records if r["kind"] == "update"} | {0: 0}
    return [{"step": r["step"], "images": sampled[r["step"]], "train_s": round(clock[r["step"]], 1),
             "score": r["means"][key], "interval": r["intervals"][key]}
            for r in records if r["kind"] == "eval" and r.get("set") == name and key in r["means"]]


def spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def summarise(runs: dict[int, list[dict]], key: str = KEY) -> dict:
    """Per seed and over seeds: before, after, lift of every evaluation set; wall-clock of each run."""
    per_seed, over = {}, {}
    for seed, records in runs.items():
        final = next(r for r in records if r["kind"] == "final")
        entry = {"run_s": round(final["elapsed_s"], 1), "updates": final["step"]}
        for name in SETS:
            points = curve(records, name, key)
            if points:
                entry[name] = {"before": points[0]["score"], "before_interval": points[0]["interval"],
                               "after": points[-1]["score"], "after_interval": points[-1]["interval"],
                               "lift": points[-1]["score"] - points[0]["score"], "curve": points}
        per_seed[seed] = entry
    for name in SETS:
        if all(name in e for e in per_seed.values()):
            over[name] = {field: spread([e[name][field] for e in per_seed.values()])
                          for field in ("before", "after", "lift")}
    over["run_s"] = spread([e["run_s"] for e in per_seed.values()])
    return {"key": key, "seeds": per_seed, "over_seeds": over}


def plot(path: Path, summary: dict, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, color in zip(SETS, ("tab:blue", "tab:orange"), strict=True):
        curves = [e[name]["curve"] for e in summary["seeds"].values() if name in e]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        scores = np.array([[p["score"] for p in c[:length]] for c in curves])  # (seeds, points)
        for ax, x in ((axes[0], "images"), (axes[1], "train_s")):
            xs = np.array([[p[x] for p in c[:length]] for c in curves]).mean(axis=0)
            ax.plot(xs, scores.mean(axis=0), "o-", color=color, label=f"{name} (mean of {len(curves)} seeds)")
            ax.fill_between(xs, scores.min(axis=0), scores.max(axis=0), color=color, alpha=0.2)
    axes[0].set_xlabel("images sampled")
    axes[1].set_xlabel("training wall-clock (s, evaluations left out)")
    axes[0].set_ylabel(f"{summary['key']} (band: range over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(summary: dict, command: str) -> str:
    lines = [f"# make reproduce ({time.strftime('%Y-%m-%d')})", "", f"`{command}`, one run per seed. {summary['key']}: "
             "before = the base policy, after = θ at the last update; ± is each evaluation's 95% interval.", "",
             "| seed | run (min) | " + " | ".join(f"{n} before → after (lift)" for n in SETS) + " |",
             "|---|---|" + "---|" * len(SETS)]
    for seed, e in summary["seeds"].items():
        cells = [f"{e[n]['before']:.3f} ± {e[n]['before_interval']:.3f} → {e[n]['after']:.3f} ± "
                 f"{e[n]['after_interval']:.3f} ({e[n]['lift']:+.3f})" if n in e else "–" for n in SETS]
        lines.append(f"| {seed} | {e['run_s'] / 60:.1f} | " + " | ".join(cells) + " |")
    over = summary["over_seeds"]
    cells = [f"{over[n]['before']['mean']:.3f} → {over[n]['after']['mean']:.3f} ({over[n]['lift']['mean']:+.3f}; "
             f"after {over[n]['after']['min']:.3f}–{over[n]['after']['max']:.3f}, lift {over[n]['lift']['min']:+.3f}–"
             f"{over[n]['lift']['max']:+.3f})" if n in over else "–" for n in SETS]
    lines.append(f"| mean (range) | {over['run_s']['mean'] / 60:.1f} | " + " | ".join(cells) + " |")
    stock = summary.get("stock_pipeline")
    if stock:
        steps = next(iter(stock.values()))["steps"]
        lines += ["", f"The same final θ through a stock diffusers `StableDiffusion3Pipeline` (`load_lora_weights`, "
                  f"its own Euler scheduler at {steps} steps; bench/stock_pipeline.py):", "",
                  "| seed | " + " | ".join(f"{n} before → after (lift)" for n in SETS) + " |",
                  "|---|" + "---|" * len(SETS)]
        for seed, result in stock.items():
            cells = [f"{s['before']['mean']:.3f} ± {s['before']['interval']:.3f} → {s['after']['mean']:.3f} ± "
                     f"{s['after']['interval']:.3f} ({s['lift']:+.3f})" if (s := result["sets"].get(n)) else "–"
                     for n in SETS]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n![learning](learning.png)\n"


def stock_checks(runs_dir: Path, name: str, seeds: list[int], steps: int) -> dict:
    """Each seed's final θ through a stock diffusers pipeline at `steps` Euler steps (the base sampled once)."""
    import torch

    from bench.stock_pipeline import check
    from configs.load import load_config
    from learner.checkpoint import latest_checkpoint

    torch.set_num_threads(2)
    results, base = {}, None
    for seed in seeds:
        checkpoint = latest_checkpoint(runs_dir / f"{name}_seed{seed}" / "checkpoints")
        result = check(load_config(checkpoint / "config.yaml"), str(checkpoint / "theta"), steps=steps, base=base)
        base = {n: s["before"] for n, s in result["sets"].items()}
        results[seed] = result
        print(f"== seed {seed}: stock pipeline ({steps} Euler steps) " + ", ".join(
            f"{n} {s['before']['mean']:.3f} -> {s['after']['mean']:.3f} ± {s['after']['interval']:.3f}"
            for n, s in result["sets"].items()), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--config", default="configs/tiny_cpu.yaml")
    parser.add_argument("--out", default="bench/reproduce", help="where results.json, results.md, learning.png go")
    parser.add_argument("--runs", default="runs", help="parent of the run directories (reproduce_seed<N>)")
    parser.add_argument("--report-only", action="store_true", help="summarise existing runs, train nothing")
    parser.add_argument("--stock-steps", type=int, default=20, help="Euler steps of the stock-pipeline check of "
                        "each seed's final θ (bench.stock_pipeline; 0: skip it)")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every seed, e.g. run.num_updates=50")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out, runs_dir = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.config).stem
    for seed in seeds if not args.report_only else []:
        command = [sys.executable, "-m", "deploy.train", args.config, f"run.seed={seed}", f"prompts.seed={seed}",
                   f"run.name={name}_seed{seed}", f"run.output_dir={runs_dir}", *args.overrides]
        print(f"== seed {seed}: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True)
    runs = {seed: read_records(runs_dir / f"{name}_seed{seed}") for seed in seeds}
    summary = summarise(runs)
    if args.stock_steps:
        summary["stock_pipeline"] = stock_checks(runs_dir, name, seeds, args.stock_steps)
    command = f"python -m deploy.train {args.config} run.seed=S prompts.seed=S {' '.join(args.overrides)}".strip()
    summary["command"] = command
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(out / "learning.png", summary, f"{command}, seeds {args.seeds}")
    (out / "results.md").write_text(markdown(summary, command))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
