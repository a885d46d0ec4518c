"""Reward replicas that scale while a job runs: the scaling decision, a real replica set on a local Ray that scales up
under load and drains back down with no request lost, and the operator command against a running set."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from actors.group import Group
from actors.scoring import GroupScorer
from bench.reward_scaling import Load
from configs.schema import AutoscaleConfig, RewardConfig
from deploy.reward_scaling import desired_replicas, start_scaler
from deploy.runtime import start_reward

AUTO = AutoscaleConfig(enabled=True, min_replicas=1, max_replicas=3, target_outstanding=2.0, window_s=10.0)


@pytest.mark.parametrize("loads, current, expected", [
    ([5, 0, 6], 1, 2),  # above target on average over the window: one more
    ([5, 0, 0], 1, 1),  # a burst, below target on average: no change
    ([0, 0, 2.5], 2, 1),  # below target × scale_down_below on average: one fewer
    ([0.5, 1.5, 1.5], 2, 2),  # between the two thresholds: no change
    ([9, 9, 9], 3, 3),  # never above max_replicas
    ([0, 0, 0], 1, 1),  # never below min_replicas
], ids=["up", "dip-holds", "down", "hysteresis", "at-max", "at-min"])
def test_desired_replicas_follows_a_held_load(loads, current, expected):
    samples = [(100.0 + 5 * i, load) for i, load in enumerate(loads)]  # spans 10 s = window_s
    assert desired_replicas(samples, current, AUTO) == expected


def test_desired_replicas_waits_for_a_full_window_and_forgets_older_samples():
    assert desired_replicas([(0.0, 9.0), (5.0, 9.0)], 1, AUTO) == 1  # 5 s of history: too short to act
    assert desired_replicas([], 2, AUTO) == 2
    old_idle = [(0.0, 0.0), (1.0, 0.0), (10.0, 2.5), (15.0, 2.5), (20.0, 2.5)]  # idle before the window
    assert desired_replicas(old_idle, 1, AUTO) == 2


def test_autoscale_bounds_are_checked_at_config_load():
    with pytest.raises(ValueError, match="min_replicas .3. must be <= reward.autoscale.max_replicas .2."):
        AutoscaleConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match=r"reward.replicas \(0\) must lie within"):
        RewardConfig(weights={"jpeg_compressibility": 1.0}, replicas=0, urls=("http://x:1",),
                     autoscale=AutoscaleConfig(enabled=True))
    RewardConfig(weights={"jpeg_compressibility": 1.0}, replicas=0, urls=("http://x:1",))  # off: unchanged rules


# ---- a real replica set on a local Ray ---------------------------------------------------------------------------
def heavy_group(index: int) -> Group:
    """8 noise images of 384²: PNG encoding in the client, decoding and JPEG encoding in the replica are real work."""
    images = np.random.default_rng(index).integers(0, 256, (8, 384, 384, 3), dtype=np.uint8)  # (K, H, W, 3)
    return Group(index=index, prompt="noise", metadata={}, seeds=tuple(range(8)), policy_version=0,
                 embeds=torch.zeros(2, 4), pooled=torch.zeros(4), x0=torch.zeros(8, 3, 8, 8),
                 timesteps=torch.ones(2), images=images)


@pytest.fixture(scope="module")
def scaled_set(local_ray):
    ray = local_ray
    cfg = RewardConfig(weights={"jpeg_compressibility": 1.0}, replicas=1, num_cpus=0.5, max_retries=3,
                       autoscale=AutoscaleConfig(enabled=True, min_replicas=1, max_replicas=2, target_outstanding=1.0,
                                                 window_s=3.0, interval_s=0.5, drain_timeout_s=60.0))
    urls, replicas = start_reward(cfg, local=True)
    scorer = ray.remote(GroupScorer).options(num_cpus=0, max_concurrency=64).remote(cfg, urls, replicas)
    scaler = start_scaler(cfg, "autoscale-test", scorer, replicas, local=True)
    yield ray, scorer, scaler
    ray.kill(scaler)
    for actor in (scorer, *replicas):
        ray.kill(actor)


def wait_for_replicas(ray, scaler, n: int, timeout_s: float) -> float:
    start = time.monotonic()
    while ray.get(scaler.status.remote())["replicas"] != n:
        assert time.monotonic() - start < timeout_s, f"not {n} replicas after {timeout_s:.0f} s: " \
                                                      f"{ray.get(scaler.status.remote())}"
        time.sleep(0.5)
    return time.monotonic() - start


@pytest.mark.slow
def test_replicas_scale_up_under_load_and_drain_down_after(scaled_set):
    ray, scorer, scaler = scaled_set
    heavy = Load(scorer, 8, heavy_group)  # up to 8 requests in flight on 1 replica, target 1 per replica
    try:
        wait_for_replicas(ray, scaler, 2, timeout_s=90)
        assert len(ray.get(scorer.load.remote())) == 2  # the client sends to both
        time.sleep(2)  # the new replica takes a share of the load
        shares = ray.get(scorer.counts.remote())
    finally:
        heavy.stop()
    light = Load(scorer, 1, heavy_group)  # ≤ 0.5 per replica < 1 × 0.5: the newest drains while requests run
    try:
        wait_for_replicas(ray, scaler, 1, timeout_s=90)
        time.sleep(1)  # requests go on on the one left
    finally:
        light.stop()
    status = ray.get(scaler.status.remote())
    assert status["reward_scale_ups"] == 1 and status["reward_scale_downs"] == 1
    assert status["reward_drain_timeouts"] == 0 and status["reward_scale_errors"] == 0
    assert heavy.groups > 0 and light.groups > 0 and not heavy.failures and not light.failures
    counts = ray.get(scorer.counts.remote())
    assert counts["scoring_failed_groups"] == 0 and counts["reward_request_failures"] == 0, (shares, counts)
    assert counts["reward_retries"] == 0  # no request was cut off by the removal and sent again
    actions = ray.get(scaler.actions_since.remote(0))
    assert [(a["action"], a["replicas"]) for a in actions] == [("scale_up", 2), ("scale_down", 1)]
    assert len(ray.get(scorer.load.remote())) == 1


@pytest.mark.slow
def test_operator_sets_the_replica_count_of_a_running_set(scaled_set):
    ray, scorer, scaler = scaled_set
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "deploy.scale_reward", "--address", address, "--run", "autoscale-test"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([*command, "--replicas", "2"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "reward replicas: 1 -> 2, held" in done.stdout and '"pinned": true' in done.stdout
    assert len(ray.get(scorer.load.remote())) == 2
    time.sleep(2)  # idle, but pinned: the load does not take the replica away
    assert ray.get(scaler.status.remote())["replicas"] == 2
    with pytest.raises(ValueError, match="3 reward replicas is outside"):
        ray.get(scaler.set_replicas.remote(3))
    assert ray.get(scaler.set_replicas.remote(1)).startswith("reward replicas: 2 -> 1")
    assert len(ray.get(scorer.load.remote())) == 1
    missing = subprocess.run([*command[:-1], "no-such-run"], capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "no reward scaler for run 'no-such-run'" in missing.stderr
    ray.get(scaler.resume_autoscaling.remote())
