"""Training driver and `ray job submit` entry point: `python -m deploy.train CONFIG [section.key=value ...]`.

Builds the runtime (deploy/runtime.py: reward servers, GroupScorer, LearnerGroup, SamplerPool), then runs one loop:
sample → score → buffer → update → broadcast weights → (evaluate, checkpoint). What the run reports (metrics.jsonl,
gauges, grids, progress bar) is deploy/reporter.py's.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray
import torch

from actors.evaluation import HELD_OUT, IN_DISTRIBUTION, evaluate, summary
from configs.load import ConfigError, dump_config, load_config
from configs.schema import Config
from deploy.reporter import Evaluations, Reporter, headline_key
from deploy.runtime import build, start_ray
from learner.checkpoint import Progress, load_checkpoint, resolve_resume, save_checkpoint


@contextmanager
def timer(times: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    times[name] = time.perf_counter() - start


def train(cfg: Config) -> dict[str, Evaluations | None]:
    """Train (or resume) as `cfg` says; returns the evaluations {"before": ..., "after": ...} by set (before is None
    for a resumed run). The actors the run started are stopped when it returns or fails."""
    started: list = []  # their shutdown callables, in start order
    try:
        return run_training(cfg, started)
    finally:
        for shutdown in reversed(started):
            shutdown()


def run_training(cfg: Config, started: list) -> dict[str, Evaluations | None]:
    resume = resolve_resume(cfg.run.resume, Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    rt = build(cfg, started, resume=resume)
    learner, pool, collector, report = rt.learner, rt.pool, rt.collector, Reporter(cfg, rt)

    def broadcast(version: int) -> list[ray.ObjectRef]:
        weights, checksum = learner.publish_async("old")
        return pool.broadcast_weights(weights, version, checksum)

    def run_eval(version: int) -> Evaluations | None:
        weights = learner.weights_async("ema" if cfg.eval.use_ema else "theta")
        results = {}
        for name, groups in rt.eval_sets.items():
            results[name] = evaluate(pool, rt.scorer, groups, weights, version, cfg.eval, name=name)
            report.evaluated(version, results[name])
        return results or None

    # The one counter: θ_old's policy version, which is the number of learner updates so far.
    version = 0
    if resume:  # learner state, prompt position and run log as they were at the checkpoint
        version = load_checkpoint(resume, learner=learner, prompts=rt.prompts, lora=cfg.policy.lora).version
        report.resumed(version, str(resume))
    report.placed(version)  # which node each role landed on
    broadcast(version)
    results = {"before": None if resume else run_eval(0)}
    while version < cfg.run.num_updates:
        times: dict[str, float] = {}
        with timer(times, "collect_s"):  # sample → score → buffer
            batch = collector.next_batch(version)
        with timer(times, "update_s"):  # update (a dead rank is replaced); samplers go on within admission control
            metrics = learner.update(batch, pump=collector.pump)
        version += 1
        with timer(times, "broadcast_s"):  # broadcast θ_old@version to every Sampler
            published_at, applied = time.time(), broadcast(version)
        pool.verify()  # every θ_old a Sampler has applied so far equals the learner's, or the run stops here
        report.updated(version, batch, metrics, times, applied, published_at)
        if cfg.eval.every and version % cfg.eval.every == 0 and version != cfg.run.num_updates:
            run_eval(version)
        if version == cfg.run.num_updates or cfg.run.checkpoint_every and version % cfg.run.checkpoint_every == 0:
            save_checkpoint(rt.run.root / "checkpoints", Progress(version, version), learner=learner,
                            prompts=rt.prompts, lora=cfg.policy.lora, config_yaml=dump_config(cfg),
                            tracker_ids=rt.run.tracker_ids())
    results["after"] = run_eval(version)
    report.placed(version)  # where each role ended up, after any restarts
    report.finished(version, results, learner_checksums=learner.checksums(),
                    unverified_broadcasts=pool.verify(timeout_s=cfg.sampler.timeout_s))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("resolved config:\n" + dump_config(cfg))
    start_ray(cfg.run.metrics_port)
    results = train(cfg)
    before, after = results["before"], results["after"]
    if before and after:  # the headline key last, in-distribution first: the run's last lines
        headline = headline_key(cfg, after)
        keys = [k for k in next(iter(after.values())).means if k != headline] + [headline]
        print("95% intervals over the evaluation images; before = the base policy, after = θ at the last update")
        for key in keys:
            for name in (IN_DISTRIBUTION, HELD_OUT):
                if name in after and key in after[name].means:
                    print(summary(before[name], after[name], key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
