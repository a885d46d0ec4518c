"""Learning speed: the shapes strict score (in-distribution; held-out for runs without it) against update step and
against training wall-clock, for the overlapped and the synchronous schedule (the two runs of bench.schedules), as
learning_speed.png and JSON.
Training wall-clock leaves out the evaluations themselves (they measure, they do not train).
"""

from __future__ import annotations

from pathlib import Path

from actors.evaluation import HELD_OUT, IN_DISTRIBUTION
from bench.context import BenchContext

STRICT, PARTIAL = "shapes_strict", "shapes"


def curve(records: list[dict]) -> list[dict]:
    """One point per evaluation of the headline set (in-distribution where the run has it, else held-out): step,
    training seconds (evaluation time removed), strict and partial score."""
    updates = {r["step"]: r for r in records if r["kind"] == "update"}
    every = [r for r in records if r["kind"] == "eval"]
    headline = IN_DISTRIBUTION if any(r.get("set") == IN_DISTRIBUTION for r in every) else HELD_OUT
    evals = [r for r in every if r.get("set", HELD_OUT) == headline]
    points, eval_seconds = [], 0.0
    start = max(r["elapsed_s"] for r in every if r["step"] == 0)  # after the evaluations at step 0
    for e in evals:
        if e["step"] > 0:
            done = updates[e["step"]]["elapsed_s"]  # the update this evaluation follows
            train_s = done - start - eval_seconds
            eval_seconds += max(r["elapsed_s"] for r in every if r["step"] == e["step"]) - done
        else:
            train_s = 0.0
        points.append({"step": e["step"], "train_s": round(train_s, 2), "strict": e["means"][STRICT],
                       "partial": e["means"][PARTIAL]})
    return points


def plot(path: Path, curves: dict[str, list[dict]], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for side, points in curves.items():
        for ax, x in ((axes[0], "step"), (axes[1], "train_s")):
            ax.plot([p[x] for p in points], [p["strict"] for p in points], "o-", label=side)
    axes[0].set_xlabel("update step")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[1].set_xlabel("training wall-clock (s, evaluations excluded)")
    axes[0].set_ylabel("shapes strict score (in-distribution)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def section(ctx: BenchContext, records: dict[str, list[dict]]) -> dict:
    """The learning-speed figures and the PNG from the two schedules' run records."""
    curves = {side: curve(recs) for side, recs in records.items()}
    policy = "random-weight stand-in policy" if ctx.policy_note.startswith("random") else ctx.policy_dir
    png = plot(ctx.out / "learning_speed.png", curves,
               f"DiffusionNFT on configs/tiny_cpu.yaml, {ctx.learning_updates} updates, policy {policy}")
    end = {side: points[-1] for side, points in curves.items()}
    wall_speedup = end["synchronous"]["train_s"] / end["overlapped"]["train_s"]
    rows = [*[[f"{side}: strict score, step 0 → {p['step']}",
               f"{points[0]['strict']:.3f} → {p['strict']:.3f} (partial {points[0]['partial']:.3f} → "
               f"{p['partial']:.3f})"] for side, points in curves.items() for p in [points[-1]]],
            *[[f"{side}: training wall-clock for {p['step']} updates", f"{p['train_s']:.0f} s"]
              for side, p in end.items()],
            ["synchronous / overlapped wall-clock for the same updates", f"{wall_speedup:.2f}×"],
            ["figure", f"`{png.name}`"]]
    return {
        "what": (f"Two `deploy.train.train` runs of {ctx.learning_updates} updates on configs/tiny_cpu.yaml "
                 f"(overlapped, then synchronous, the default; seed 0), both evaluation sets every "
                 f"{ctx.learning_eval_every} updates; the curves are in-distribution strict (the headline set)."),
        "config": {"updates": ctx.learning_updates, "eval_every": ctx.learning_eval_every},
        "curves": curves, "png": png.name,
        "figures": {"wall_clock_speedup": wall_speedup,
                    "final_strict": {side: p["strict"] for side, p in end.items()}},
        "rows": rows, "targets": [],
        "notes": ["Runs this short show the early slope only; one evaluation's strict score has a standard error of "
                  "about √(p(1−p)/n) over its n images."],
    }
