"""Prometheus metrics of the driver (policy version and lag, train reward, buffer, phase times), exported through
Ray's metrics agent as `ray_nft_*`, and the file_sd target file that lets Prometheus find the run's servers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import urlsplit

import ray

from actors.metrics import HeldGauge
from actors.sampler_pool import SamplerPool
from learner.buffer import Batch, Buffer


def train_scores(batch: Batch) -> dict[str, float]:
    """The batch's mean score per score key (NaN, a key a scorer left out for an image, is skipped)."""
    means = {}
    for key in batch.entries[0].summary.scores:
        values = [v for e in batch.entries for v in e.summary.scores.get(key, ()) if math.isfinite(v)]
        if values:
            means[key] = sum(values) / len(values)
    return means


class DriverMetrics:
    """Set once per update. Drop counts are gauges of running totals, so a healthy run shows 0, not no series."""

    def __init__(self):
        self.version = HeldGauge("nft_learner_policy_version", "theta_old version the learner last published")
        self.lag = HeldGauge("nft_policy_lag", "versions between the learner and the oldest group of the last batch")
        self.reward = HeldGauge("nft_train_reward", "mean weighted training reward of the last batch")
        self.score = HeldGauge("nft_train_score", "mean training score of the last batch, per scorer",
                               tag_keys=("scorer",))
        self.buffered = HeldGauge("nft_buffer_groups", "scored groups held in the buffer after the last batch")
        self.dropped = HeldGauge("nft_buffer_dropped_groups", "groups dropped so far, by reason (stale, failed, "
                                 "overflow, uniform)", tag_keys=("reason",))
        self.inflight = HeldGauge("nft_sampler_inflight_groups", "groups in sample calls not yet scored")
        self.faults = HeldGauge("nft_sampler_faults", "sampler faults so far, by kind (resubmitted_groups, "
                                "sampler_restarts, dead_samplers)", tag_keys=("kind",))
        self.recoveries = HeldGauge("nft_learner_recoveries", "dead learner ranks replaced so far in this run "
                                    "(learner.max_recoveries)")
        self.verified = HeldGauge("nft_weight_sync_verified", "theta_old loads by samplers whose checksum matched "
                                  "the learner's, so far (a mismatch stops the run)")
        self.phase_seconds = HeldGauge("nft_driver_phase_seconds", "seconds of each driver loop phase, last update",
                                       tag_keys=("phase",))
        self.eval_score = HeldGauge("nft_eval_score", "mean score of the last evaluation, per evaluation set "
                                    "(in-distribution, held-out) and score key", tag_keys=("set", "key"))
        self.eval_interval = HeldGauge("nft_eval_interval95", "half-width of the 95% interval of nft_eval_score",
                                       tag_keys=("set", "key"))

    def evaluated(self, name: str, means: dict[str, float], intervals: dict[str, float]) -> None:
        for key, value in means.items():
            self.eval_score.set(value, tags={"set": name, "key": key})
            if math.isfinite(intervals.get(key, math.nan)):
                self.eval_interval.set(intervals[key], tags={"set": name, "key": key})

    def updated(self, version: int, lag: int, batch: Batch, times: dict[str, float], buffer: Buffer,
                pool: SamplerPool, learner_recoveries: int = 0) -> None:
        self.version.set(version)
        self.lag.set(lag)
        self.reward.set(float(batch.rewards.mean()))
        for scorer, mean in train_scores(batch).items():
            self.score.set(mean, tags={"scorer": scorer})
        self.buffered.set(len(buffer))
        counts = buffer.counts
        for reason, total in (("stale", counts.stale_groups), ("failed", counts.failed_groups),
                              ("overflow", counts.overflow_groups), ("uniform", counts.uniform_groups)):
            self.dropped.set(total, tags={"reason": reason})
        self.inflight.set(pool.inflight_groups)
        self.verified.set(pool.verified_broadcasts)
        self.recoveries.set(learner_recoveries)
        for kind, total in pool.counts().items():
            self.faults.set(total, tags={"kind": kind})
        for phase, seconds in times.items():
            self.phase_seconds.set(seconds, tags={"phase": phase.removesuffix("_s")})


def write_prometheus_targets(path: Path, reward_urls: list[str], *, own_ray: bool) -> None:
    """This run's scrape targets as a Prometheus file_sd file (deploy/prometheus/prometheus.yml reads the folder):
    the reward servers, and the metrics agent of the Ray the run started itself. A cluster's Ray lists its own
    agents in /tmp/ray/prom_metrics_service_discovery.json instead, so they are never scraped twice."""
    targets = [urlsplit(url).netloc for url in reward_urls]
    if own_ray:
        node = ray.nodes()[0]  # the one local node
        targets.append(f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": targets}], indent=1))
    tmp.replace(path)  # atomic: Prometheus may read the file at any moment
