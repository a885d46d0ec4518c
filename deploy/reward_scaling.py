"""Reward replicas that follow the load of a running job: `desired_replicas` (load history -> replica count) and the
`RewardScaler` actor, which starts RewardReplica actors, drains and stops them, by load (`reward.autoscale`) or as
the operator says (`python -m deploy.scale_reward`). The GroupScorer's client sends to the replicas it publishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.metrics import HeldGauge
from configs.schema import AutoscaleConfig, RewardConfig
from reward_service.replica import RewardReplica

NAMESPACE = "nft"  # the scaler is a named actor here, so `deploy.scale_reward` finds it from another driver
REPLICA_START_TIMEOUT_S = 600.0  # a new replica builds its scorers: minutes for large models
DRAIN_POLL_S = 0.1


def scaler_name(run_name: str) -> str:
    return f"reward-scaler-{run_name}"


def start_replica(cfg: RewardConfig, local: bool) -> ray.actor.ActorHandle:
    """One RewardReplica actor serving cfg.weights' scorers, on loopback for a local Ray, else on every interface."""
    remote = ray.remote(RewardReplica).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                               resources=dict(cfg.resources), max_restarts=3)
    return remote.remote(list(cfg.weights), cfg.scorer_args, api_key=cfg.api_key,
                         host="127.0.0.1" if local else "0.0.0.0")


def desired_replicas(samples: Sequence[tuple[float, float]], current: int, cfg: AutoscaleConfig) -> int:
    """samples: (time.monotonic(), outstanding requests per replica), oldest first, since the last change.
    Once they span window_s: one more replica when the mean of the last window_s is above target_outstanding, one
    fewer when it is below target_outstanding × scale_down_below; always within [min, max]. The mean, because the
    outstanding count of a busy replica swings between 0 and many within a second."""
    want = current
    if samples and samples[-1][0] - samples[0][0] >= cfg.window_s:
        window = [load for t, load in samples if t >= samples[-1][0] - cfg.window_s]
        mean = sum(window) / len(window)
        if mean > cfg.target_outstanding:
            want = current + 1
        elif mean < cfg.target_outstanding * cfg.scale_down_below:
            want = current - 1
    return max(cfg.min_replicas, min(cfg.max_replicas, want))


class RewardScaler:
    """Threaded actor that owns the reward replica set of one run: samples the GroupScorer's load every
    interval_s and acts on `desired_replicas`, unless the operator pinned a count with `set_replicas`."""

    def __init__(self, cfg: RewardConfig, scorer: ray.actor.ActorHandle, replicas: list, local: bool):
        self.cfg, self.auto, self.scorer, self.local = cfg, cfg.autoscale, scorer, local
        self.replicas = list(replicas)
        self.pinned = False  # the operator set the count: load does not change it until `resume_autoscaling`
        self.counts = {"reward_scale_ups": 0, "reward_scale_downs": 0, "reward_drain_timeouts": 0,
                       "reward_scale_errors": 0}
        self.actions: list[dict[str, Any]] = []  # one record per change, for the run's metrics.jsonl
        self._lock = threading.Lock()
        self.gauge = HeldGauge("nft_reward_replicas", "reward replicas the client sends to")
        self.changes = HeldGauge("nft_reward_scale_actions", "reward replicas added (up) and removed (down) so far",
                                 tag_keys=("direction",))
        self.gauge.set(len(self.replicas))
        for direction in ("up", "down"):
            self.changes.set(0, tags={"direction": direction})
        threading.Thread(target=self._watch, name="reward-scaler", daemon=True).start()

    def set_replicas(self, n: int) -> str:
        """The operator's count: scale to n now and hold it (load-based scaling pauses until resume_autoscaling)."""
        if not self.auto.min_replicas <= n <= self.auto.max_replicas:
            raise ValueError(f"{n} reward replicas is outside reward.autoscale.min_replicas "
                             f"({self.auto.min_replicas}) .. max_replicas ({self.auto.max_replicas}) of this run")
        with self._lock:
            self.pinned = True
            before = len(self.replicas)
            while len(self.replicas) != n:
                self._scale(n, "set by the operator")
        return f"reward replicas: {before} -> {n}, held until `--auto`"

    def resume_autoscaling(self) -> str:
        with self._lock:
            self.pinned = False
        return f"reward replicas: {len(self.replicas)}, scaled by load again"

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"replicas": len(self.replicas), "pinned": self.pinned, **self.counts}

    def actions_since(self, seen: int) -> list[dict[str, Any]]:
        """The change records after the first `seen` ones."""
        with self._lock:
            return self.actions[seen:]

    def _watch(self) -> None:
        samples: list[tuple[float, float]] = []
        while True:
            time.sleep(self.auto.interval_s)
            try:
                load = ray.get(self.scorer.load.remote(), timeout=60)
                with self._lock:
                    if self.pinned:
                        samples.clear()
                        continue
                    samples.append((time.monotonic(), sum(load.values()) / max(len(load), 1)))
                    samples = [s for s in samples if s[0] >= samples[-1][0] - 2 * self.auto.window_s]
                    want = desired_replicas(samples, len(self.replicas), self.auto)
                    if want != len(self.replicas):
                        window = [load for t, load in samples if t >= samples[-1][0] - self.auto.window_s]
                        self._scale(want, f"outstanding requests per replica {sum(window) / len(window):.2f} on "
                                          f"average over {self.auto.window_s:g} s (target "
                                          f"{self.auto.target_outstanding:g})")
                        samples.clear()
            except (RayActorError, GetTimeoutError) as error:  # the scorer restarting, a replica lost mid-change
                self.counts["reward_scale_errors"] += 1
                print(f"reward scaler: {type(error).__name__}: {error}; trying again in {self.auto.interval_s:g} s",
                      flush=True)

    def _scale(self, want: int, reason: str) -> None:
        """One step toward `want` (the caller holds the lock): start a replica, or drain and stop the newest."""
        before = len(self.replicas)
        drained_s = None
        if want > before:
            replica = start_replica(self.cfg, self.local)
            ray.get(replica.url.remote(), timeout=REPLICA_START_TIMEOUT_S)  # serving: its scorers are built
            self.replicas.append(replica)
            self._publish()
        else:
            replica = self.replicas.pop()
            url = ray.get(replica.url.remote(), timeout=60)
            self._publish()  # the client stops sending to it; what is in flight there finishes
            drained_s = self._drain(url)
            ray.get(replica.stop.remote(), timeout=60)
            ray.kill(replica)
        direction = "up" if want > before else "down"
        self.counts[f"reward_scale_{direction}s"] += 1
        self.changes.set(self.counts[f"reward_scale_{direction}s"], tags={"direction": direction})
        self.gauge.set(len(self.replicas))
        record = {"action": f"scale_{direction}", "replicas": len(self.replicas), "was": before, "reason": reason,
                  "drain_s": drained_s, "time": time.time()}
        self.actions.append(record)
        drained = f", drained in {drained_s:.1f} s" if drained_s is not None else ""
        print(f"reward scaler: {before} -> {len(self.replicas)} replicas ({reason}){drained}", flush=True)

    def _publish(self) -> None:
        urls = ray.get([replica.url.remote() for replica in self.replicas], timeout=60)
        ray.get(self.scorer.set_replicas.remote(self.replicas, urls), timeout=60)

    def _drain(self, url: str) -> float:
        """Wait until no request is in flight to `url` (at most drain_timeout_s); the seconds waited."""
        start = time.monotonic()
        while ray.get(self.scorer.outstanding.remote(url), timeout=60):
            if time.monotonic() - start > self.auto.drain_timeout_s:
                self.counts["reward_drain_timeouts"] += 1
                print(f"reward scaler: {url} still has requests in flight after {self.auto.drain_timeout_s:g} s; "
                      "stopping it anyway (the client retries them on the other replicas)", flush=True)
                break
            time.sleep(DRAIN_POLL_S)
        return time.monotonic() - start


def start_scaler(cfg: RewardConfig, run_name: str, scorer: ray.actor.ActorHandle, replicas: list, local: bool,
                 scheduling_strategy: Any = None) -> ray.actor.ActorHandle:
    """The run's RewardScaler, named `reward-scaler-<run>` in the `nft` namespace; it owns the replicas it starts
    (they end with it)."""
    return ray.remote(RewardScaler).options(
        name=scaler_name(run_name), namespace=NAMESPACE, num_cpus=0, max_concurrency=4,
        scheduling_strategy=scheduling_strategy).remote(cfg, scorer, replicas, local)
