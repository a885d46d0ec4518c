"""results.md from results.json: the targets table the README quotes, then each measurement's figures and notes."""

from __future__ import annotations

from pathlib import Path

from bench.paired import Spread

ORDER = ("overlap", "broadcast", "reward", "reward_scaling", "learner", "buffer", "learning", "algorithms")
TITLES = {"overlap": "Overlap (end-to-end images trained per second)", "broadcast": "Weight broadcast (θ_old)",
          "reward": "Reward path (HTTP vs in-process)",
          "reward_scaling": "Reward replicas that follow the load", "learner": "Learner step (NFT vs flow matching)",
          "buffer": "Buffer memory per sample", "learning": "Learning speed (in-distribution shapes strict score)",
          "algorithms": "NFT against Flow-GRPO (in-distribution shapes strict score, 3 seeds each)"}


# Per target: what on a 2-core CPU machine keeps it out of reach, and the figure a GPU node has to show to meet it.
# Shown beside a missed target only; the measured value itself always comes from results.json.
WHY_MISSED = {
    "overlapped / synchronous over the bound": (
        "samplers, learner, reward server and driver share 2 cores, so the pinned stages still slow each other "
        "(the update phase takes longer overlapped than alone); a GPU node, one GPU per stage, needs overlapped "
        "throughput ≥ 0.9 × its own bound (t_collect + t_train + t_sync) / (max + t_sync)"),
    "broadcast to 2 samplers (own cores) / raw put+get": (
        "the driver, the object store and 2 samplers share 2 cores, so the second sampler's unpickle and in-place "
        "copy queue behind the first; a node with a free core per sampler (every GPU node) needs ≤ 1.5×"),
    "flatness: 8 vs 1 samplers": (
        "8 samplers on 2 cores apply the weights at most 2 at a time, so about 4× is this machine's floor; a node "
        "with 8 GPUs and their host cores needs ≤ 1.25×"),
    "HTTP overhead at batch 16, CPU-bound scorer (shapes 128²)": (
        "PNG encoding, the HTTP round trip and uvicorn's loop run on the same 2 cores as the scorer they are "
        "measured against; with the scorer on its own GPU and the client on other cores it needs ≤ 15%"),
    "NFT / flow-matching step, kl off": (
        "NFT adds a no-grad v_old forward to the trained forward + backward; on the 2.4M-parameter tiny model a "
        "forward costs half a backward and per-call overhead dominates; at SD3.5-M 512² on a GPU it needs ≤ 1.45×"),
    "NFT / flow-matching step, kl on": (
        "as with kl off, plus the θ_ref forward of the KL term (adapters off); at SD3.5-M 512² on a GPU it needs "
        "≤ 1.8×"),
}


def spread_text(spread: Spread | dict, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    """'1.23× [1.10–1.30] n=6': median, interquartile range, number of paired rounds."""
    s = spread if isinstance(spread, dict) else spread.as_dict()
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'] * scale)}{unit} [{f.format(s['q1'] * scale)}–{f.format(s['q3'] * scale)}] "
            f"n={s['n']}")


def target_rows(results: dict) -> list[str]:
    rows = ["| measurement | figure | measured | target | met | if missed: why here, what a GPU node needs |",
            "|---|---|---|---|---|---|"]
    measurements = results.get("measurements", {})
    for name in ORDER:
        for t in measurements.get(name, {}).get("targets", []):
            sign = "≤" if t["at_most"] else "≥"
            rows.append(f"| {name} | {t['name']} | {t['value']:.3g}{t['unit']} | {sign} {t['limit']:.3g}{t['unit']} "
                        f"| {'yes' if t['met'] else '**no**'} | {'' if t['met'] else why_missed(t['name'])} |")
    return rows


def why_missed(name: str) -> str:
    if name not in WHY_MISSED:
        raise KeyError(f"bench target {name!r} has no WHY_MISSED entry in bench/report.py: add one line saying what "
                       "keeps it out of reach on this machine and what a GPU node needs")
    return WHY_MISSED[name]


def write_markdown(path: Path, results: dict) -> Path:
    m = results.get("machine", {})
    lines = [
        "# Benchmarks", "",
        f"Written by `make bench` (`python -m bench.run`) on {results.get('date')}: {m.get('cpus')} CPUs, "
        f"torch {m.get('torch')}, ray {m.get('ray')}, device {m.get('device')}. Policy: {results.get('policy')}.",
        "Every figure is a ratio of two sides measured in the same run, alternated round by round; values are "
        "median [interquartile range] over rounds. Absolute times are context only: this machine is shared.",
    ]
    if not m.get("gpu"):
        lines.append("No GPU was available: absolute GPU figures are not measured.")
    if results.get("quick"):
        lines.append("**Quick (smoke) run: the figures below are not measurements.**")
    lines += ["", "## Targets", "", *target_rows(results)]
    measurements = results.get("measurements", {})
    for name in ORDER:
        if name not in measurements:
            continue
        r = measurements[name]
        lines += ["", f"## {TITLES[name]}", "",
                  f"Measured {r.get('date')} in {r.get('seconds')} s (1-min load average {r['loadavg_1min'][0]:.1f} "
                  f"at start, {r['loadavg_1min'][1]:.1f} at end){' — quick' if r.get('quick') else ''}. Other busy "
                  f"processes at start: {'; '.join(r.get('busy_processes') or []) or 'none'}.", ""]
        if r.get("what"):
            lines += [r["what"], ""]
        lines += ["| figure | value |", "|---|---|", *[f"| {label} | {text} |" for label, text in r.get("rows", [])]]
        missed = [t for t in r.get("targets", []) if not t["met"]]
        for t in missed:
            lines.append(f"\nTarget missed: {t['name']} = {t['value']:.3g}{t['unit']} "
                         f"({'≤' if t['at_most'] else '≥'} {t['limit']:.3g}{t['unit']} wanted).")
        if r.get("notes"):
            lines += ["", *[f"- {note}" for note in r["notes"]]]
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":  # re-render results.md from results.json without measuring again
    bench = Path(__file__).parent
    import json
    write_markdown(bench / "results.md", json.loads((bench / "results.json").read_text()))
