"""Reward workers that follow the load: a real autoscaled replica set (`RewardScaler`, deploy/reward_scaling.py)
serving the CPU-bound `shapes` scorer on 256² renders, driven through a `GroupScorer` as a run drives it, by a load
that changes: 8 callers (heavy) until the set has scaled up and held two replicas for a while, then 1 caller (light)
until it has drained back to one. Each second the replica count and the images scored so far are read; the timeline
goes to reward_scaling.png.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import numpy as np
import ray
import torch

from actors.group import Group
from actors.scoring import GroupScorer
from actors.shapes_world import render_metadata
from bench.context import BenchContext, ray_session
from configs.schema import AutoscaleConfig, RewardConfig
from deploy.reward_scaling import start_scaler
from deploy.runtime import start_reward

HEAVY, LIGHT = 8, 1  # callers, each with one group of GROUP images in flight at a time
GROUP, RESOLUTION = 8, 256
PHASE_TIMEOUT_S = 240.0  # a phase that has not scaled by then is reported as not scaled


def scene_group(index: int) -> Group:
    """GROUP renders of one held-out record at RESOLUTION: the scorer finds every object, real work per image."""
    records = [json.loads(line) for line in open("configs/prompts/shapes_test.jsonl")]
    record = records[index % len(records)]
    metadata = {k: v for k, v in record.items() if k != "prompt"}
    rng = np.random.default_rng(index)
    images = np.stack([render_metadata(metadata, rng, RESOLUTION) for _ in range(GROUP)])  # (K, H, W, 3)
    return Group(index=index, prompt=record["prompt"], metadata=metadata, seeds=tuple(range(GROUP)), policy_version=0,
                 embeds=torch.zeros(2, 4), pooled=torch.zeros(4), x0=torch.zeros(GROUP, 3, 8, 8),
                 timesteps=torch.ones(2), images=images)


class Load:
    """`callers` threads, each scoring one group (`group_of(caller)`) at a time through the GroupScorer until
    stopped: the groups and images scored so far, and the failures (tests/test_reward_autoscale.py uses it too)."""

    def __init__(self, scorer, callers: int, group_of: Callable[[int], Group]):
        self.scorer, self.group_of, self.groups, self.images, self.failures = scorer, group_of, 0, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(callers)]
        for thread in self._threads:
            thread.start()

    def _run(self, caller: int) -> None:
        group = self.group_of(caller)
        while not self._stop.is_set():
            [scored] = ray.get(self.scorer.score_groups.remote([group]), timeout=120)
            if scored.failure or scored.reward is None:
                self.failures.append(str(scored.failure))
            self.groups += 1
            self.images += scored.size

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(150)


def rate(timeline: list[tuple[float, int, int]], start: float, end: float) -> float:
    """Images scored per second between two times of the timeline (its nearest samples)."""
    inside = [(t, n) for t, _, n in timeline if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def measure(ctx: BenchContext) -> dict[str, dict]:
    window_s, hold_s = (3.0, 6.0) if ctx.quick else (20.0, 30.0)  # a long window: one replica's rate gets steady
    auto = AutoscaleConfig(enabled=True, min_replicas=1, max_replicas=2, target_outstanding=2.0, window_s=window_s,
                           interval_s=0.5, drain_timeout_s=60.0)
    cfg = RewardConfig(weights={"shapes": 1.0}, replicas=1, num_cpus=0.5, max_retries=3, autoscale=auto)
    timeline: list[tuple[float, int, int]] = []  # (seconds, replicas, images scored so far)
    marks, loads = {}, []
    with ray_session():
        urls, replicas = start_reward(cfg, local=True)
        scorer = ray.remote(GroupScorer).options(num_cpus=0, max_concurrency=64).remote(cfg, urls, replicas)
        scaler = start_scaler(cfg, "bench-reward-scaling", scorer, replicas, local=True)
        start = time.monotonic()

        def sample_until(done, extra_s: float) -> float | None:
            """Sample each second until `done(replicas)`, then extra_s more; when it became true (None: never)."""
            began, reached = time.monotonic(), None
            while True:
                n = ray.get(scaler.status.remote())["replicas"]
                now = time.monotonic()
                timeline.append((now - start, n, sum(load.images for load in loads)))
                if reached is None and done(n):
                    reached = now - start
                if reached is not None and now - start >= reached + extra_s or now - began > PHASE_TIMEOUT_S:
                    return reached
                time.sleep(1.0)

        loads.append(Load(scorer, HEAVY, scene_group))
        marks["scaled_up"] = sample_until(lambda n: n == 2, hold_s)
        loads[-1].stop()
        marks["light"] = time.monotonic() - start
        loads.append(Load(scorer, LIGHT, scene_group))
        marks["scaled_down"] = sample_until(lambda n: n == 1, 3.0)
        loads[-1].stop()
        failures = [f for load in loads for f in load.failures]
        status, counts = ray.get(scaler.status.remote()), ray.get(scorer.counts.remote())
        actions = ray.get(scaler.actions_since.remote(0))
        for actor in (scaler, scorer, *replicas):
            ray.kill(actor)
    up, light, down = marks["scaled_up"], marks["light"], marks["scaled_down"]
    # heavy load on one replica: after its warm-up (its rate climbs over the first ~10 s) and before the scaler can
    # decide (window_s), so the second replica's start-up (imports, scorer build) does not compete for the cores
    one = rate(timeline, 0.5 * window_s, min(up, window_s)) if up else float("nan")
    two = rate(timeline, up + 3.0, light) if up else float("nan")  # the same load on two
    plot(ctx.out / "reward_scaling.png", timeline, marks)
    rows = [["heavy load (8 callers): images/s on 1 replica → on 2 after the scale-up", f"{one:.0f} → {two:.0f} "
             f"({two / one:.2f}×)"],
            ["scale-up after the heavy load began", f"{up:.0f} s" if up else "none"],
            ["scale-down after the light load (1 caller) began", f"{down - light:.0f} s" if down else "none"],
            ["changes (action → replicas)", ", ".join(f"{a['action']} → {a['replicas']}" for a in actions)],
            ["groups lost to scoring, requests retried, drain timeouts",
             f"{counts['scoring_failed_groups'] + len(failures)}, {counts['reward_retries']}, "
             f"{status['reward_drain_timeouts']}"]]
    return {"reward_scaling": {
        "what": (f"A replica set with reward.autoscale (min 1, max 2, target 2 outstanding requests per replica, "
                 f"window {window_s:.0f} s) serving `shapes` on groups of {GROUP} renders at {RESOLUTION}², driven "
                 f"through a GroupScorer by {HEAVY} callers, then {LIGHT}. Timeline: reward_scaling.png."),
        "images_per_s": {"1": one, "2": two}, "speedup": two / one if one else float("nan"),
        "scale_up_after_s": up, "scale_down_after_s": down - light if down else None,
        "actions": actions, "lost_groups": counts["scoring_failed_groups"] + len(failures),
        "retries": counts["reward_retries"], "drain_timeouts": status["reward_drain_timeouts"],
        "timeline": timeline, "rows": rows, "targets": [],
        "notes": ["The two replicas, the GroupScorer's PNG encoding and the callers share this machine's cores, so "
                  "the gain from the second replica is bounded by what they leave free (the reward section measures "
                  "the same ratio with the client outside the scaling loop)."]}}


def plot(path, timeline: list[tuple[float, int, int]], marks: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s[0] for s in timeline])
    n = np.array([s[1] for s in timeline])
    done = np.array([s[2] for s in timeline], dtype=np.float64)
    per_s = np.gradient(done, t) if len(t) > 1 else np.zeros_like(t)
    fig, left = plt.subplots(figsize=(8, 3.5))
    left.plot(t, per_s, color="tab:blue", label="images scored / s")
    left.set_xlabel("seconds")
    left.set_ylabel("images scored / s", color="tab:blue")
    right = left.twinx()
    right.step(t, n, where="post", color="tab:red", label="replicas")
    right.set_ylabel("replicas", color="tab:red")
    right.set_ylim(0, 3)
    left.axvspan(0, marks["light"], color="0.9", label=f"{HEAVY} callers")
    left.set_title(f"reward.autoscale: {HEAVY} callers, then {LIGHT}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
