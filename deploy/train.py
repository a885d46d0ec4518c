"""Training driver and `ray job submit` entry point: `python -m deploy.train CONFIG [section.key=value ...]`.

Builds the runtime (deploy/runtime.py: reward servers, GroupScorer, LearnerGroup, SamplerPool), then runs one loop:
sample → score → buffer → update → broadcast weights → (evaluate, checkpoint).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm import tqdm

from actors.evaluation import HELD_OUT, IN_DISTRIBUTION, EvalResult, evaluate, summary
from configs.load import ConfigError, dump_config, load_config
from configs.schema import Config
from deploy.metrics import DriverMetrics
from deploy.report import RunDirectory
from deploy.runtime import build, start_ray
from learner.checkpoint import Progress, load_checkpoint, resolve_resume, save_checkpoint


@contextmanager
def timer(times: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    times[name] = time.perf_counter() - start


Evaluations = dict[str, EvalResult]  # evaluation set -> its result
GRID_ROWS = 64  # evaluation grids show the first rows of a set (the first image of each); the metrics cover all


def before_after(run: RunDirectory, before: Evaluations, after: Evaluations, rows: int = 32) -> None:
    """`before_after_<set>.png`: the same rows and noise seeds drawn by the base and by the final θ, side by side."""
    for name, result in after.items():
        first = before[name]
        n = min(rows, len(first.images), len(result.images))
        images = np.stack([image for pair in zip(first.images[:n], result.images[:n], strict=True) for image in pair])
        captions = [f"{label}: {c}" for pair in zip(first.captions[:n], result.captions[:n], strict=True)
                    for label, c in zip(("base", "after"), pair, strict=True)]
        run.grid(f"before_after_{name}", images, captions)


def log_eval(run: RunDirectory, step: int, result: EvalResult, bar: tqdm) -> None:
    run.log("eval", step, set=result.name, version=result.version, means=result.means, intervals=result.intervals,
            per_tag=result.per_tag, images=result.num_images, failed_groups=result.failed_groups)
    run.grid(f"eval_{result.name}_{step:05d}", result.images[:GRID_ROWS], result.captions[:GRID_ROWS])
    bar.write(f"[eval @ update {step}] {result.name} ({result.num_images} images): " + ", ".join(
        f"{k} {v:.3f} ± {result.intervals[k]:.3f}" for k, v in result.means.items()))


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
    rt = build(cfg, started)
    run, scorer, learner, pool, buffer, collector, bar = (rt.run, rt.scorer, rt.learner, rt.pool, rt.buffer,
                                                           rt.collector, rt.bar)
    eval_weights = "ema" if cfg.eval.use_ema else "theta"
    driver_metrics = DriverMetrics()

    def run_eval(step: int) -> Evaluations | None:
        if not rt.eval_sets:
            return None
        weights = learner.weights_async(eval_weights)
        results = {}
        for name, groups in rt.eval_sets.items():
            results[name] = evaluate(pool, scorer, groups, weights, step, cfg.eval, name=name)
            log_eval(run, step, results[name], bar)
            driver_metrics.evaluated(name, results[name].means, results[name].intervals)
        return results

    progress = Progress(step=0, version=0)
    if resume:  # learner state, prompt position and run log as they were at the checkpoint
        progress = load_checkpoint(resume, learner=learner, prompts=rt.prompts, lora=cfg.policy.lora)
        run.truncate(progress.step)
        run.log("resume", progress.step, version=progress.version, checkpoint=str(resume))
    version = progress.version
    weights, checksum = learner.publish_async("old")
    pool.broadcast_weights(weights, version, checksum)
    results = {"before": None if resume else run_eval(0)}
    for step in range(progress.step + 1, cfg.run.num_updates + 1):
        times: dict[str, float] = {}
        with timer(times, "collect_s"):  # sample → score → buffer
            batch = collector.next_batch(version)
        with timer(times, "update_s"):  # learner update; samplers keep going within admission control
            refs = learner.update_async(batch)
            collector.wait(refs)
            metrics = ray.get(refs)[0]
        version += 1
        with timer(times, "broadcast_s"):
            published = time.time()
            weights, checksum = learner.publish_async("old")
            applied = pool.broadcast_weights(weights, version, checksum)
        pool.verify()  # every θ_old a Sampler has applied so far equals the learner's, or the run stops here
        lag = version - 1 - min(batch.policy_versions)
        driver_metrics.updated(version, lag, batch, times, buffer, pool)
        record = run.log("update", step, version=version, reward=float(batch.rewards.mean()), policy_lag=lag,
                         images_sampled=collector.sampled_images,
                         images_per_s=collector.sampled_images / max(time.time() - run.start, 1e-9),
                         verified_broadcasts=pool.verified_broadcasts, **metrics, **times, **vars(buffer.counts),
                         **pool.counts(), **ray.get(scorer.counts.remote()))
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{metrics['loss']:.4f}", lag=lag,
                        img_s=f"{record['images_per_s']:.1f}")
        if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.run.num_updates:
            run_eval(step)
        if cfg.run.grid_every and step % cfg.run.grid_every == 0:
            entries = batch.entries[:16]
            run.grid(f"train_{step:05d}", np.stack([ray.get(e.previews)[e.slot] for e in entries]),
                     [f"{e.summary.prompt} ({e.summary.reward[0]:.2f})" for e in entries])
        if not ray.wait(applied, num_returns=len(applied), timeout=0)[1]:  # applied behind queued calls
            run.log("broadcast", step, version=version,
                    applied_after_s=max(pool.applied_times(applied), default=published) - published)
        if step == cfg.run.num_updates or cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
            save_checkpoint(run.root / "checkpoints", Progress(step, version), learner=learner, prompts=rt.prompts,
                            lora=cfg.policy.lora, config_yaml=dump_config(cfg))
    results["after"] = run_eval(cfg.run.num_updates)
    bar.close()
    unverified = pool.verify(timeout_s=cfg.sampler.timeout_s)
    run.log("final", cfg.run.num_updates, version=version, learner_checksums=learner.checksums(),
            verified_broadcasts=pool.verified_broadcasts, unverified_broadcasts=unverified,
            resubmitted_groups=pool.resubmitted_groups, **vars(buffer.counts))
    run.curves(train_key="reward", test_key=headline_key(cfg, results["after"]))
    if results["before"] and results["after"]:
        before_after(run, results["before"], results["after"])
    return results


def headline_key(cfg: Config, evaluations: Evaluations | None) -> str:
    """The score curves and summaries lead with: GenEval's strict score where the scorer reports one."""
    name = next(iter(cfg.reward.weights))
    means = next(iter(evaluations.values())).means if evaluations else {}
    return f"{name}_strict" if f"{name}_strict" in means else name


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
