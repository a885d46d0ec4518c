"""One object per consumer: after scoring, the driver gets summaries, the learner x0 and conditioning (no pixels),
the grids one preview image per group; θ_old travels as numpy arrays."""

import asyncio
import pickle

import numpy as np
import torch

from actors.group import Group, GroupSummary, TrainingGroup
from actors.policy import weights_checksum
from actors.scoring import GroupScorer
from configs.schema import LearnerConfig, LoraConfig, PolicyConfig, RewardConfig
from learner.learner import Learner
from reward_service.replica import ServerThread
from reward_service.server import create_app


class MeanScorer:
    name = "mean"

    def score(self, images, prompts, metadata):
        return {"mean": [float(im.mean()) / 255 for im in images]}


def group_of(index: int) -> Group:
    images = np.random.default_rng(index).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)  # (K, H, W, 3)
    return Group(index=index, prompt=f"prompt {index}", metadata={}, seeds=(0, 1, 2, 3), policy_version=3,
                 embeds=torch.randn(6, 8), pooled=torch.randn(8), x0=torch.randn(4, 3, 8, 8),
                 timesteps=torch.linspace(1, 0.1, 4), images=images)


def test_scoring_splits_a_call_into_what_each_consumer_needs():
    server = ServerThread(create_app({"mean": MeanScorer()}))
    try:
        scorer = GroupScorer(RewardConfig(weights={"mean": 1.0}, replicas=0, urls=(server.url,)), [server.url])
        groups = [group_of(0), group_of(1)]
        summaries, training, previews = asyncio.run(scorer.score(groups))
    finally:
        server.stop()
    assert [type(s) for s in summaries] == [GroupSummary] * 2 and summaries[1].prompt == "prompt 1"
    assert summaries[0].reward == tuple(float(im.mean()) / 255 for im in groups[0].images)
    assert [type(t) for t in training] == [TrainingGroup] * 2
    assert not any(hasattr(t, "images") or hasattr(t, "scores") for t in training)
    for group, part in zip(groups, training, strict=True):
        assert part.index == group.index and part.policy_version == 3 and part.size == 4
        assert all(torch.equal(getattr(part, k), getattr(group, k)) for k in ("x0", "embeds", "pooled", "timesteps"))
    assert previews.shape == (2, 64, 64, 3) and np.array_equal(previews[1], groups[1].images[0])
    # what a learner rank fetches: the scored group without its pixels (and without scores, seeds, metadata)
    fetched, whole = len(pickle.dumps(training, protocol=5)), len(pickle.dumps(groups, protocol=5))
    assert fetched < whole - sum(g.images.nbytes for g in groups) + 1024


def test_theta_old_is_published_as_numpy_with_its_checksum(tiny_pipeline):
    cfg = PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LoraConfig(rank=4, alpha=8))
    learner = Learner(cfg, LearnerConfig(), seed=0)
    weights, checksum = learner.publish("old")
    assert weights and all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in weights.values())
    assert checksum == weights_checksum(learner.get_weights("old"))
    assert weights.keys() == learner.get_weights("old").keys()
