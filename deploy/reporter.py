"""The `Reporter`: everything the driver tells a person and Prometheus, kept out of the training loop.

Per update: the `update` record of metrics.jsonl (reward, policy lag, learner metrics, phase times, counts), the
driver's gauges, the progress bar, training grids and late-broadcast records. Per evaluation: the `eval` record,
grids and gauges. At the end: the `final` record, curves.png and the before/after grids.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from actors.evaluation import EvalResult
from configs.schema import Config
from deploy.metrics import DriverMetrics, train_scores
from deploy.runtime import Runtime, node_resources, placement
from learner.buffer import Batch

Evaluations = dict[str, EvalResult]  # evaluation set -> its result
GRID_ROWS = 64  # evaluation grids show the first rows of a set (the first image of each); the metrics cover all


def headline_key(cfg: Config, evaluations: Evaluations | None) -> str:
    """The score curves and summaries lead with: GenEval's strict score where the scorer reports one."""
    name = next(iter(cfg.reward.weights))
    means = next(iter(evaluations.values())).means if evaluations else {}
    return f"{name}_strict" if f"{name}_strict" in means else name


class Reporter:
    def __init__(self, cfg: Config, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.run, self.bar = rt.run, rt.bar
        self.gauges = DriverMetrics()
        self.scale_actions = 0  # reward scaler changes already logged
        self.trained_groups = 0  # groups the learner trained on in this process (since the resume, if resumed)

    def placed(self, version: int) -> None:
        """The `placement` record: the node each role's actors run on (a restarted actor's new node at the end)."""
        nodes = placement(self.rt, log=self.bar.write)
        self.run.log("placement", version, nodes=nodes, node_resources=node_resources())

    def resumed(self, version: int, checkpoint: str) -> None:
        self.run.truncate(version)
        self.run.log("resume", version, version=version, checkpoint=checkpoint)

    def evaluated(self, version: int, result: EvalResult) -> None:
        self.run.log("eval", version, set=result.name, version=result.version, means=result.means,
                     intervals=result.intervals, per_tag=result.per_tag, images=result.num_images,
                     failed_groups=result.failed_groups)
        self.run.grid(f"eval_{result.name}_{version:05d}", result.images[:GRID_ROWS], result.captions[:GRID_ROWS])
        self.bar.write(f"[eval @ update {version}] {result.name} ({result.num_images} images): " + ", ".join(
            f"{k} {v:.3f} ± {result.intervals[k]:.3f}" for k, v in result.means.items()))
        self.gauges.evaluated(result.name, result.means, result.intervals)

    def updated(self, version: int, batch: Batch, metrics: dict[str, Any], times: dict[str, float],
                applied: list[ray.ObjectRef], published_at: float) -> None:
        rt, cfg = self.rt, self.cfg
        self.trained_groups += len(batch.entries)
        lag = version - 1 - min(batch.policy_versions)  # versions between the trained θ_old and the oldest sample's
        self.gauges.updated(version, lag, batch, times, rt.buffer, rt.pool, learner_recoveries=rt.learner.recoveries)
        record = self.run.log(
            "update", version, version=version, reward=float(batch.rewards.mean()), policy_lag=lag,
            images_sampled=rt.collector.sampled_images,
            images_per_s=rt.collector.sampled_images / max(time.time() - self.run.start, 1e-9),
            verified_broadcasts=rt.pool.verified_broadcasts, train_scores=train_scores(batch),
            groups=[e.summary.index for e in batch.entries], **metrics, **times,
            **vars(rt.buffer.counts), learner_recoveries=rt.learner.recoveries,
            **rt.pool.counts(), **ray.get(rt.scorer.counts.remote()))
        self.scaled(version)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{metrics['loss']:.4f}", lag=lag,
                             img_s=f"{record['images_per_s']:.1f}")
        if cfg.run.grid_every and version % cfg.run.grid_every == 0:
            entries = batch.entries[:16]
            self.run.grid(f"train_{version:05d}", np.stack([ray.get(e.previews)[e.slot] for e in entries]),
                          [f"{e.summary.prompt} ({e.summary.reward[0]:.2f})" for e in entries])
        if not ray.wait(applied, num_returns=len(applied), timeout=0)[1]:  # applied behind queued calls
            self.run.log("broadcast", version, version=version, applied_after_s=max(
                rt.pool.applied_times(applied), default=published_at) - published_at)

    def scaled(self, version: int) -> None:
        """A `reward_scale` record per change of the reward replica set since the last update (reward.autoscale)."""
        if self.rt.reward_scaler is None:
            return
        for action in ray.get(self.rt.reward_scaler.actions_since.remote(self.scale_actions)):
            self.run.log("reward_scale", version, **action)
            self.scale_actions += 1

    def finished(self, version: int, results: dict[str, Evaluations | None], *, learner_checksums: list[float],
                 unverified_broadcasts: int) -> None:
        rt = self.rt
        self.bar.close()
        self.scaled(version)  # reward replica changes after the last update
        # Where every group drawn from the prompt stream went (a fresh run: prompt_position is the groups drawn):
        # prompt_position = trained + stale + failed + overflow + buffered + in flight.
        self.run.log("final", version, version=version, learner_checksums=learner_checksums,
                     verified_broadcasts=rt.pool.verified_broadcasts, unverified_broadcasts=unverified_broadcasts,
                     prompt_position=rt.prompts.position, trained_groups=self.trained_groups,
                     buffered_groups=len(rt.buffer), inflight_groups=rt.pool.inflight_groups,
                     learner_recoveries=rt.learner.recoveries,
                     **vars(rt.buffer.counts), **rt.pool.counts(), **ray.get(rt.scorer.counts.remote()))
        self.run.curves(train_key="reward", test_key=headline_key(self.cfg, results["after"]))
        if results["before"] and results["after"]:
            self.before_after(results["before"], results["after"])

    def before_after(self, before: Evaluations, after: Evaluations, rows: int = 32) -> None:
        """`before_after_<set>.png`: the same rows and noise seeds drawn by the base and by the final θ, side by
        side."""
        for name, result in after.items():
            first = before[name]
            n = min(rows, len(first.images), len(result.images))
            images = np.stack([image for pair in zip(first.images[:n], result.images[:n], strict=True)
                               for image in pair])
            captions = [f"{label}: {c}" for pair in zip(first.captions[:n], result.captions[:n], strict=True)
                        for label, c in zip(("base", "after"), pair, strict=True)]
            self.run.grid(f"before_after_{name}", images, captions)
