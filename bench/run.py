"""`python -m bench.run [--only NAME[,NAME]] [--quick]`: runs the measurements, writes results.json and results.md.

With --only, the other measurements' earlier results in the output folder are kept (each carries its own date).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import ray
import torch

from bench import algorithms, broadcast, buffer_memory, learner_step, reward_path, reward_scaling, schedules
from bench.context import COMMITTED_POLICY, BenchContext
from bench.report import write_markdown

# Cheap measurements first: a failure late in the long ones still leaves the others written. Each returns its
# results by section; `schedules` trains twice and fills both the overlap and the learning-speed sections.
MEASUREMENTS: dict[str, Callable[[BenchContext], dict[str, dict]]] = {
    "buffer": buffer_memory.measure,
    "learner": learner_step.measure,
    "broadcast": broadcast.measure,
    "reward": reward_path.measure,
    "reward_scaling": reward_scaling.measure,
    "schedules": schedules.measure,
    "algorithms": algorithms.measure,
}
OPT_IN = {"algorithms"}  # about 45 min of training: run only when named with --only
ALIASES = {"overlap": "schedules", "learning": "schedules"}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no GPU)",
            "gpu": torch.cuda.is_available()}


def busy_processes(window_s: float = 1.0, threshold: float = 20.0) -> list[str]:
    """Other processes using the CPUs as a measurement starts (no Ray runs between measurements): what the figures
    shared the machine with. 'name (nice N): P% of a core' over `window_s`."""
    others = [p for p in psutil.process_iter(["name", "nice", "cmdline"]) if p.pid != os.getpid()]
    for p in others:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)  # the first call starts the window
    time.sleep(window_s)
    busy = []
    for p in others:
        with contextlib.suppress(psutil.Error):
            if (percent := p.cpu_percent(None)) >= threshold:
                command = " ".join(p.info["cmdline"] or [p.info["name"]]).strip()[:90]
                busy.append(f"`{command}` (nice {p.info['nice']}): {percent:.0f}% of a core")
    return busy


def choose_policy(given: str | None, scratch: Path) -> tuple[str, str]:
    if given:
        return given, f"given with --policy ({given})"
    if (COMMITTED_POLICY / "model_index.json").is_file():
        return str(COMMITTED_POLICY), f"the committed pretrained tiny policy ({COMMITTED_POLICY})"
    from actors.shapes_world import VOCABULARY
    from actors.tiny_policy import create_tiny_pipeline

    path = create_tiny_pipeline(scratch / "tiny_random", list(VOCABULARY))
    return str(path), (f"random-weight tiny policy ({COMMITTED_POLICY} not present): timings are representative, "
                       "learning-speed scores are not")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(MEASUREMENTS)} "
                                                   "(overlap and learning name schedules; algorithms, about 45 min, "
                                                   "runs only when named)")
    parser.add_argument("--quick", action="store_true", help="smoke size: seconds each, figures meaningless")
    parser.add_argument("--out", default="bench", help="folder for results.json, results.md, learning_speed.png")
    parser.add_argument("--policy", help="tiny policy directory (default: configs/policies/tiny_shapes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of configs/tiny_cpu.yaml for every measurement (repeatable), e.g. "
                             "sampler.num_actors=1")
    parser.add_argument("--learning-updates", type=int, default=24,
                        help="updates per training run of `schedules` (the longest part of the bench)")
    parser.add_argument("--learning-eval-every", type=int, default=6, help="held-out evaluation interval")
    args = parser.parse_args(argv)
    names = [ALIASES.get(n.strip(), n.strip()) for n in args.only.split(",") if n.strip()]
    args.names = list(dict.fromkeys(names)) or [n for n in MEASUREMENTS if n not in OPT_IN]
    unknown = sorted(set(args.names) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; choose from {', '.join(MEASUREMENTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if args.only and path.is_file() else {}
    scratch = Path(tempfile.mkdtemp(prefix="nft-bench-"))
    policy_dir, policy_note = choose_policy(args.policy, scratch)
    quick = args.quick
    ctx = BenchContext(quick=quick, policy_dir=policy_dir, policy_note=policy_note, scratch=scratch, out=out,
                       learning_updates=3 if quick else args.learning_updates,
                       learning_eval_every=3 if quick else args.learning_eval_every, config_overrides=tuple(args.set))
    results.update(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), machine=machine(),
                   quick=quick, policy=policy_note, config="configs/tiny_cpu.yaml", config_overrides=args.set)
    try:
        measurements = results.setdefault("measurements", {})
        for name in args.names:
            print(f"[bench] {name} ...", flush=True)
            busy = busy_processes()
            start, load = time.perf_counter(), os.getloadavg()[0]
            sections = MEASUREMENTS[name](ctx)
            seconds = round(time.perf_counter() - start, 1)
            for section, result in sections.items():
                result.update(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), quick=quick,
                              seconds=seconds, loadavg_1min=[load, os.getloadavg()[0]], busy_processes=busy,
                              policy=policy_note)
                measurements[section] = result
            print(f"[bench] {name} done in {seconds:.0f}s", flush=True)
            path.write_text(json.dumps(results, indent=1) + "\n")  # after each: a later failure keeps this one
            write_markdown(out / "results.md", results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # run directories and stand-in policies
    print(f"[bench] wrote {path} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
