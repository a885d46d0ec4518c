"""`python -m bench.algorithms [--nft-runs DIR | --nft-results JSON] [--grpo-runs DIR] [--seeds 0,1,2] [--updates N]
[--report-only]`: NFT against Flow-GRPO on the embedded default's world, side by side.

Each algorithm runs as `make reproduce` runs `make run` (bench/reproduce.py: one `deploy.train` process per seed,
`run.seed` = `prompts.seed` = seed): NFT with configs/tiny_cpu.yaml, Flow-GRPO with configs/tiny_cpu_grpo.yaml (the
same world, reward, batch, optimizer, schedule and evaluation; the collection and the loss differ). With
--report-only the runs already in the two folders are compared. Writes, under --out (default bench/algorithms/):
results.json, results.md and algorithms.png: in-distribution strict against images sampled and against training
wall-clock, mean over seeds with the seeds' range as a band; and how many images (and seconds) NFT needs to reach
Flow-GRPO's final mean score. With --nft-results, NFT's curves are read from a `make reproduce` results.json (the
same runs of configs/tiny_cpu.yaml, bench/reproduce/results.json by default when given without a value) instead of
being trained again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.reproduce import curve, read_records

CONFIGS = {"NFT": "configs/tiny_cpu.yaml", "Flow-GRPO": "configs/tiny_cpu_grpo.yaml"}
SET, KEY = "in-distribution", "shapes_strict"


def reproduced_curves(path: Path, seeds: list[int]) -> dict[int, list[dict]]:
    """Per seed, the in-distribution curve of a `make reproduce` results.json (bench/reproduce.py's `curve` points)."""
    data = json.loads(path.read_text())
    if data.get("key") != KEY:
        raise ValueError(f"{path} reports {data.get('key')!r}, not {KEY!r}: rerun `make reproduce` or pass --nft-runs")
    missing = [s for s in seeds if str(s) not in data["seeds"]]
    if missing:
        raise ValueError(f"{path} has no run of seed(s) {missing} (it has {sorted(data['seeds'])}): pass --seeds "
                         "with those it has, or run them with `make reproduce`")
    return {s: data["seeds"][str(s)][SET]["curve"] for s in seeds}


def mean_curve(curves_by_seed: dict[int, list[dict]]) -> dict[str, list[float]]:
    """Evaluation points common to every seed: step, images and training seconds (means), score mean/min/max."""
    curves = list(curves_by_seed.values())
    length = min(len(c) for c in curves)
    scores = np.array([[p["score"] for p in c[:length]] for c in curves])  # (seeds, points)
    return {"step": [p["step"] for p in curves[0][:length]],
            "images": np.array([[p["images"] for p in c[:length]] for c in curves]).mean(axis=0).tolist(),
            "train_s": np.array([[p["train_s"] for p in c[:length]] for c in curves]).mean(axis=0).tolist(),
            "mean": scores.mean(axis=0).tolist(), "min": scores.min(axis=0).tolist(),
            "max": scores.max(axis=0).tolist(), "seeds": len(curves)}


def first_reach(c: dict, axis: str, score: float) -> float | None:
    """The `axis` value (images or train_s) where the mean curve first reaches `score`, linearly interpolated."""
    for i in range(1, len(c["mean"])):
        lo, hi = c["mean"][i - 1], c["mean"][i]
        if hi >= score > lo or (i == 1 and lo >= score):
            if lo >= score:
                return c[axis][i - 1]
            return c[axis][i - 1] + (score - lo) / (hi - lo) * (c[axis][i] - c[axis][i - 1])
    return None


def compare(curves: dict[str, dict]) -> dict:
    nft, grpo = curves["NFT"], curves["Flow-GRPO"]
    target = grpo["mean"][-1]
    out = {"target": target, "grpo_start": grpo["mean"][0], "grpo_images": grpo["images"][-1],
           "grpo_train_s": grpo["train_s"][-1], "grpo_improved": target > grpo["mean"][0],
           "nft_final": nft["mean"][-1], "nft_final_images": nft["images"][-1]}
    for axis in ("images", "train_s"):
        # a ratio only means something when Flow-GRPO ended above where both started
        reached = first_reach(nft, axis, target) if out["grpo_improved"] else None
        out[f"nft_{axis}"] = reached
        out[f"ratio_{axis}"] = out[f"grpo_{axis}"] / reached if reached else None
    return out


def plot(path: Path, curves: dict[str, dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for (name, c), color in zip(curves.items(), ("tab:blue", "tab:green"), strict=True):
        for ax, axis in zip(axes, ("images", "train_s"), strict=True):
            ax.plot(c[axis], c["mean"], "o-", color=color, label=f"{name} (mean of {c['seeds']} seeds)")
            ax.fill_between(c[axis], c["min"], c["max"], color=color, alpha=0.2)
    axes[0].set_xlabel("images sampled")
    axes[1].set_xlabel("training wall-clock (s, evaluations left out)")
    axes[0].set_ylabel(f"{SET} {KEY} (band: range over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(curves: dict[str, dict], result: dict, commands: dict[str, str]) -> str:
    lines = [f"# NFT against Flow-GRPO ({time.strftime('%Y-%m-%d')})", "",
             *[f"- {name}: `{command}`" for name, command in commands.items()], "",
             f"{SET} {KEY}, mean over seeds [range], at each evaluation:", "",
             "| algorithm | " + " | ".join(f"update {s}" for s in curves["NFT"]["step"]) + " |",
             "|---|" + "---|" * len(curves["NFT"]["step"])]
    for name, c in curves.items():
        cells = [f"{m:.3f} [{lo:.3f}–{hi:.3f}]" for m, lo, hi in zip(c["mean"], c["min"], c["max"], strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Flow-GRPO's final mean score is {result['target']:.3f}, after {result['grpo_images']:.0f} images "
              f"and {result['grpo_train_s']:.0f} s of training."]
    if not result["grpo_improved"]:
        lines.append(f"It is not above its start ({result['grpo_start']:.3f}), so there is no ratio to report: "
                     f"Flow-GRPO did not improve the policy in these runs, while NFT's mean went to "
                     f"{result['nft_final']:.3f} after {result['nft_final_images']:.0f} images.")
    elif result["nft_images"] is not None:
        lines.append(f"NFT's mean curve reaches it after {result['nft_images']:.0f} images "
                     f"({result['ratio_images']:.1f}× fewer) and {result['nft_train_s']:.0f} s "
                     f"({result['ratio_train_s']:.1f}× less training wall-clock), interpolated between evaluations.")
    else:
        lines.append("NFT's mean curve does not reach it in these runs.")
    return "\n".join(lines) + "\n\n![NFT against Flow-GRPO](algorithms.png)\n"


def rows(result: dict, curves: dict[str, dict]) -> list[tuple[str, str]]:
    """The `make bench` section's table: each algorithm's curve ends and the ratio (or why there is none)."""
    table = [(f"{name}: {SET} {KEY} at updates {', '.join(map(str, c['step']))} (mean [seed range])",
              " → ".join(f"{m:.3f} [{lo:.3f}–{hi:.3f}]" for m, lo, hi in zip(c["mean"], c["min"], c["max"],
                                                                            strict=True)))
             for name, c in curves.items()]
    for name, c in curves.items():
        table.append((f"{name}: images sampled / training seconds to the last evaluation",
                      f"{c['images'][-1]:.0f} / {c['train_s'][-1]:.0f} s"))
    if not result["grpo_improved"]:
        table.append(("images NFT needs to reach Flow-GRPO's final score", "no ratio: Flow-GRPO ended at or below "
                      f"its start ({result['target']:.3f} vs {result['grpo_start']:.3f})"))
    elif result["nft_images"] is None:
        table.append(("images NFT needs to reach Flow-GRPO's final score", "not reached in these runs"))
    else:
        table.append(("Flow-GRPO images / NFT images to Flow-GRPO's final score", f"{result['ratio_images']:.1f}×"))
        table.append(("Flow-GRPO / NFT training seconds to it", f"{result['ratio_train_s']:.1f}×"))
    return table


def finished(run_dir: Path) -> bool:
    """A run directory whose metrics end with the final record."""
    path = run_dir / "metrics.jsonl"
    return path.is_file() and any(r["kind"] == "final" for r in read_records(run_dir))


def measure(ctx) -> dict[str, dict]:
    """`make bench ARGS="--only algorithms"` (opt-in: about 45 min): Flow-GRPO's 3 seeds trained into
    runs/algorithms_grpo (reported again, not retrained, when all three are complete there), NFT's curves taken from
    bench/reproduce/results.json. --quick trains both for 2 updates on one seed in the bench's scratch folder."""
    if ctx.quick:
        out = ctx.scratch / "algorithms"
        argv = ["--seeds", "0", "--updates", "2", "--nft-runs", str(out / "nft"), "--grpo-runs", str(out / "grpo")]
    else:
        out, runs = ctx.out / "algorithms", Path("runs/algorithms_grpo")
        argv = ["--nft-results", "--grpo-runs", str(runs)]
        if all(finished(runs / f"{Path(CONFIGS['Flow-GRPO']).stem}_seed{s}") for s in (0, 1, 2)):
            print(f"[bench] algorithms: Flow-GRPO's 3 runs in {runs} are complete, reported again (delete the folder "
                  "to train them anew)", flush=True)
            argv.append("--report-only")
    main([*argv, "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    reused = ("Flow-GRPO's runs were trained before this measurement and reported again; this section's time is the "
              "report's. " if "--report-only" in argv else "")
    return {"algorithms": {
        "what": (f"NFT (configs/tiny_cpu.yaml) against Flow-GRPO (configs/tiny_cpu_grpo.yaml), the same world, reward,"
                 f" batch and evaluation; seeds {data['seeds']}. {reused}NFT's curves are `make reproduce`'s "
                 "(bench/reproduce/results.json) in a full run, so its training seconds carry that run's machine load. "
                 f"Written by `python -m bench.algorithms` ({out / 'results.md'}, {out / 'algorithms.png'})."),
        "rows": rows(data["comparison"], data["curves"]), "targets": []}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.algorithms", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--updates", type=int, default=140, help="run.num_updates of every run")
    parser.add_argument("--nft-runs", default="runs/algorithms_nft", help="run directories of NFT (<config>_seed<N>)")
    parser.add_argument("--nft-results", nargs="?", const="bench/reproduce/results.json", default=None,
                        help="take NFT's curves from this `make reproduce` results.json instead of training NFT")
    parser.add_argument("--grpo-runs", default="runs/algorithms_grpo", help="run directories of Flow-GRPO")
    parser.add_argument("--out", default="bench/algorithms")
    parser.add_argument("--report-only", action="store_true", help="compare the runs already there, train nothing")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    folders = {"NFT": Path(args.nft_runs), "Flow-GRPO": Path(args.grpo_runs)}
    # the algorithms whose runs are here: all, or only Flow-GRPO when NFT's curves come from --nft-results
    here = {name: config for name, config in CONFIGS.items() if not (name == "NFT" and args.nft_results)}
    for name, config in {} if args.report_only else here.items():
        subprocess.run([sys.executable, "-m", "bench.reproduce", "--config", config, "--seeds", args.seeds,
                        "--runs", str(folders[name]), "--out", str(folders[name]), "--stock-steps", "0",
                        f"run.num_updates={args.updates}"], check=True)
    runs = {name: {seed: read_records(folders[name] / f"{Path(config).stem}_seed{seed}") for seed in seeds}
            for name, config in here.items()}
    per_seed = {name: {seed: curve(records, SET, KEY) for seed, records in by_seed.items()}
                for name, by_seed in runs.items()}
    updates = {name: next(r for r in by_seed[seeds[0]] if r["kind"] == "final")["step"]
               for name, by_seed in runs.items()}
    if args.nft_results:
        per_seed = {"NFT": reproduced_curves(Path(args.nft_results), seeds), **per_seed}
        updates = {"NFT": per_seed["NFT"][seeds[0]][-1]["step"], **updates}
    curves = {name: mean_curve(by_seed) for name, by_seed in per_seed.items()}
    commands = {name: f"python -m deploy.train {CONFIGS[name]} run.seed=S prompts.seed=S run.num_updates={n}"
                for name, n in updates.items()}
    result = compare(curves)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"curves": curves, "comparison": result, "commands": commands,
                                                  "seeds": seeds}, indent=1) + "\n")
    plot(out / "algorithms.png", curves, f"NFT vs Flow-GRPO on the shapes world, seeds {args.seeds}")
    (out / "results.md").write_text(markdown(curves, result, commands))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
