"""Nothing waits silently: a missing reward server, an actor that cannot be placed, a stalled Sampler and a lost one
that does not come back each end in an error that names the problem and the fix, within a bounded time (real local
Ray, real sockets)."""

from __future__ import annotations

import re
import socket
import time

import pytest
import ray

from actors.prompts import PromptGroup
from actors.sampler_pool import SamplerPool
from configs.load import load_config
from configs.schema import RewardConfig
from deploy.runtime import start_reward
from learner.learner_group import LearnerGroup
from reward_service.client import RewardError

pytestmark = pytest.mark.slow


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe closes


def config(tiny_pipeline, *overrides):
    return load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", *overrides])


def test_missing_reward_server_is_named(local_ray):
    url = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(RewardError, match=f"{url}.*Check that they run"):
        start_reward(RewardConfig(weights={"shapes": 1.0}, replicas=0, urls=(url,)), local=True)
    assert time.monotonic() - start < 30


def test_learner_that_cannot_be_placed(local_ray, tiny_pipeline):
    cfg = config(tiny_pipeline, "learner.num_cpus=64")
    with pytest.raises(RuntimeError, match=r"cannot be placed within 2s.*lower learner.num_ranks/num_cpus/num_gpus"):
        LearnerGroup(cfg.policy, cfg.learner, seed=0, placement_timeout_s=2)
    assert not [pg for pg in ray.util.placement_group_table().values() if pg["state"] == "PENDING"]


def test_sampler_that_cannot_be_placed(local_ray, tiny_pipeline):
    cfg = config(tiny_pipeline, "sampler.num_cpus=64")
    with pytest.raises(RuntimeError, match=r"not ready within 2s.*Lower sampler.num_actors/num_cpus/num_gpus"):
        SamplerPool(cfg.policy, cfg.sampler, max_inflight=1, ready_timeout_s=2)


@ray.remote(num_cpus=0)
class Unused:
    """Stands in for the GroupScorer: the stalled call never gets as far as scoring."""

    def score(self, groups):
        raise AssertionError("a stalled sample call must not reach scoring")


def test_stalled_sampler_call_is_reported(local_ray, tiny_pipeline):
    # 100 solver steps on 16 images take seconds; a call is reported once it runs past timeout_s (0.5 s).
    cfg = config(tiny_pipeline, "sampler.num_actors=1", "sampler.num_steps=100", "sampler.timeout_s=0.5")
    pool, unused = SamplerPool(cfg.policy, cfg.sampler, max_inflight=1), Unused.remote()
    try:
        pool.submit([PromptGroup(0, "a photo of a circle", {"tag": "single_object", "include": [
            {"class": "circle", "count": 1}]}, tuple(range(16)))],
            score=lambda sampled: unused.score.options(num_returns=3).remote(sampled))
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"Sampler 0 has not finished a sample call.*sampler.timeout_s = 0.5"):
            while time.monotonic() - start < 60:
                pool.poll(0.1)
    finally:
        pool.shutdown()


def test_sampler_not_back_in_time_is_reported(local_ray, tiny_pipeline):
    """A lost Sampler is said at once with the resources it waits for; not back within sampler.timeout_s, it stops
    the run naming them (here its wait is pushed past the bound: a real one takes as long as no node is free)."""
    cfg = config(tiny_pipeline, "sampler.num_actors=1", "sampler.num_steps=2", "learner.timestep_fraction=0.5",
                 "sampler.timeout_s=30")
    said: list[str] = []
    pool, unused = SamplerPool(cfg.policy, cfg.sampler, max_inflight=1, log=said.append), Unused.remote()
    try:
        pool.submit([PromptGroup(0, "a photo of a circle", {}, (0, 1))],
                    score=lambda sampled: unused.score.options(num_returns=3).remote(sampled))
        ray.kill(pool.actors[0], no_restart=False)
        start = time.monotonic()
        while not pool.restarting:
            assert time.monotonic() - start < 60, "the lost Sampler was never noticed"
            pool.poll(0.1)
        assert pool.resubmitted_groups == 1 and pool.inflight_groups == 1  # waiting for a Sampler to take them
        assert len(said) == 1 and re.fullmatch(r"Sampler 0 lost \(.*Actor\w+Error\)\): Ray restarts it on a node "
                                               r"with \{'CPU': 0.5, 'GPU': 0.0\} free; its groups are resubmitted",
                                               said[0]), said
        assert "Samplers [0] wait to be restarted on a node with {'CPU': 0.5, 'GPU': 0.0} free" in pool.waiting_for()
        pool.restart_began[0] -= 31
        with pytest.raises(TimeoutError, match=r"Samplers \[0\] not back within sampler.timeout_s \(30s\).*"
                                               r"\{'CPU': 0.5, 'GPU': 0.0\} free.*grow the sampler node group"):
            pool.poll(0.1)
    finally:
        pool.shutdown()
