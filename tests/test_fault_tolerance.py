"""Faults: non-finite rewards and losses never reach the weights; a Sampler and a reward replica killed mid-run."""

import asyncio
import json
import math

import numpy as np
import pytest
import torch

from actors.group import Group
from actors.scoring import GroupScorer, combine
from configs.load import load_config
from configs.schema import LearnerConfig, LoraConfig, PolicyConfig, RewardConfig
from learner.learner import Learner
from reward_service.replica import ServerThread
from reward_service.server import create_app


class NonFiniteScorer:
    """Answers NaN for prompts saying 'nan', inf for 'inf', else the image mean."""

    name = "mean"

    def score(self, images, prompts, metadata):
        special = {"nan": math.nan, "inf": math.inf}
        return {"mean": [special.get(p, float(im.mean()) / 255) for im, p in zip(images, prompts, strict=True)]}


def group_of(prompt: str, index: int = 0) -> Group:
    images = np.random.default_rng(index).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)  # (K, H, W, 3)
    return Group(index=index, prompt=prompt, metadata={}, seeds=(0, 1, 2, 3), policy_version=0,
                 embeds=torch.zeros(2, 4), pooled=torch.zeros(4), x0=torch.zeros(4, 3, 8, 8),
                 timesteps=torch.ones(2), images=images)


def test_non_finite_rewards_fail_their_group_and_are_counted():
    server = ServerThread(create_app({"mean": NonFiniteScorer()}))
    try:
        scorer = GroupScorer(RewardConfig(weights={"mean": 1.0}, replicas=0, urls=(server.url,)), [server.url])
        groups = [group_of("nan", 0), group_of("inf", 1), group_of("a red circle", 2)]

        async def score_all():
            return [await scorer.score_group(g) for g in groups]

        bad_nan, bad_inf, good = asyncio.run(score_all())
    finally:
        server.stop()
    for bad in (bad_nan, bad_inf):  # the server sends non-finite as null: the scorer failed on those images
        assert bad.reward is None and "failed on 4 of 4 images" in bad.failure
    assert good.failure is None and len(good.reward) == 4 and all(math.isfinite(r) for r in good.reward)
    assert scorer.counts()["invalid_reward_groups"] == 2 and scorer.counts()["scoring_failed_groups"] == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None], ids=["nan", "inf", "-inf", "none"])
def test_combine_refuses_non_finite_scores(value):
    reward, failure = combine({"a": [1.0, value], "b": [0.5, 0.5]}, {"a": 1.0, "b": 2.0})
    assert reward is None and "'a' failed on 1 of 2" in failure
    assert combine({"a": [1.0, 2.0], "b": [0.5, 0.5]}, {"a": 1.0, "b": 2.0}) == ([2.0, 3.0], None)


def test_non_finite_loss_skips_the_step_and_leaves_weights(tiny_pipeline):
    policy_cfg = PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LoraConfig(rank=4, alpha=8))
    learner = Learner(policy_cfg, LearnerConfig(micro_batch_size=8), seed=0)
    embeds, pooled = learner.policy.encode(["a photo of a red circle"] * 8)
    x0 = torch.randn(8, *learner.policy.latent_shape)  # (B, C, H, W)
    x0[0, 0, 0, 0] = float("nan")
    data = {"x0": x0, "embeds": embeds, "pooled": pooled, "timesteps": torch.linspace(0.9, 0.1, 4).repeat(8, 1),
            "r": torch.rand(8), "version": torch.zeros(8, dtype=torch.long)}
    before = learner.checksum()
    metrics = learner._optimizer_step(data)
    assert not math.isfinite(metrics["loss"])
    assert learner.skipped_steps == 1 and learner.step == 0 and learner.checksum() == before


# ---- a real run on a local Ray: kill a Sampler and the only reward replica while calls are in flight ---------------
FAULTS = ["prompts.group_size=4", "schedule.groups_per_update=2", "schedule.buffer_capacity=8",
          "learner.micro_batch_size=4", "sampler.num_actors=2", "sampler.groups_per_call=1", "sampler.num_steps=4",
          "reward.replicas=1", "prompts.test=null", "eval.in_distribution_images_per_prompt=0", "run.grid_every=0",
          "run.progress=false", "run.num_updates=6",
          "policy.lora.rank=4", "policy.lora.alpha=8", "run.checkpoint_every=0"]
KILL_SAMPLER_AT, KILL_REPLICA_AT = 6, 10  # submissions: both land while earlier calls are still in flight


@pytest.mark.slow
def test_killed_sampler_and_reward_replica(local_ray, tiny_pipeline, tmp_path, monkeypatch):
    import deploy.runtime
    import deploy.train

    ray, seen = local_ray, {"replicas": [], "trained": [], "urls": []}
    start_reward = deploy.runtime.start_reward

    def recording_start_reward(cfg, local):
        urls, replicas = start_reward(cfg, local)
        seen["replicas"], seen["urls"] = replicas, urls
        return urls, replicas

    class KillingPool(deploy.runtime.SamplerPool):
        def submit(self, groups, score):
            super().submit(groups, score)
            if self.seq == KILL_SAMPLER_AT:  # the call just submitted is queued or running on that actor
                ray.kill(self.actors[list(self.calls.values())[-1].actor], no_restart=False)
            if self.seq == KILL_REPLICA_AT:
                ray.kill(seen["replicas"][0], no_restart=False)

    class RecordingLearnerGroup(deploy.runtime.LearnerGroup):
        def update_async(self, batch):
            seen["trained"].extend(e.summary.index for e in batch.entries)
            return super().update_async(batch)

    monkeypatch.setattr(deploy.runtime, "start_reward", recording_start_reward)
    monkeypatch.setattr(deploy.runtime, "SamplerPool", KillingPool)
    monkeypatch.setattr(deploy.runtime, "LearnerGroup", RecordingLearnerGroup)
    cfg = load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", f"run.output_dir={tmp_path}",
                                                "run.name=faults", *FAULTS])
    deploy.train.train(cfg)

    records = [json.loads(line) for line in (tmp_path / "faults" / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "update"]
    last = updates[-1]
    print({k: last[k] for k in ("resubmitted_groups", "sampler_restarts", "dead_samplers", "failed_groups",
                                "scoring_failed_groups", "reward_url_refreshes", "reward_request_failures",
                                "reward_retries", "stale_groups", "skipped_steps")})
    assert [r["step"] for r in updates] == list(range(1, 7))
    assert last["sampler_restarts"] == 1 and last["dead_samplers"] == 0  # once: no call ran on base weights after
    assert last["resubmitted_groups"] >= 1
    assert last["reward_url_refreshes"] == 1 and last["reward_request_failures"] >= 1
    assert len(seen["trained"]) == 6 * 2 and len(set(seen["trained"])) == len(seen["trained"])  # never twice
    assert last["skipped_steps"] == 0
