"""Faults: non-finite rewards and losses never reach the weights. Killed Samplers, reward replicas and learner ranks
in a real run: tests/test_chaos.py (random kills, exact accounting) and tests/test_multinode.py (lost nodes, exact
counts of restarts, resubmissions and failovers)."""

import asyncio
import math

import numpy as np
import pytest
import torch

from actors.group import Group
from actors.scoring import GroupScorer, combine
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
