"""Exact v_old under lag: each sample's v_old comes from the θ_old version that drew it (what its Sampler held)."""

import pytest
import torch

from actors.policy import OLD
from actors.sampler import Sampler
from configs.schema import LearnerConfig, LoraConfig, PolicyConfig, SamplerConfig
from learner.learner import Learner


@pytest.fixture(scope="module")
def policy_cfg(tiny_pipeline):
    return PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LoraConfig(rank=4, alpha=8))


def batch_data(learner: Learner, versions: list[int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    n = len(versions)
    embeds, pooled = learner.policy.encode(["a photo of a red circle", "a photo of two squares"] * (n // 2))
    return {"x0": torch.randn(n, *learner.policy.latent_shape, generator=g), "embeds": embeds, "pooled": pooled,
            "timesteps": torch.linspace(0.9, 0.1, 4).repeat(n, 1), "r": torch.rand(n, generator=g),
            "version": torch.tensor(versions)}


def update_without_ray(learner: Learner, data: dict[str, torch.Tensor]) -> None:
    learner._shard = lambda batch: data  # the batch's tensors, as a rank would fetch them from the object store
    learner.update(None)


def test_lagged_samples_use_the_theta_old_that_drew_them(policy_cfg):
    cfg = LearnerConfig(micro_batch_size=8, lr=5e-2, old_policy={"flat": 0, "uprate": 0.0, "cap": 0.0})
    learner = Learner(policy_cfg, cfg, seed=0, max_policy_lag=1)
    published = {0: learner.get_weights("old")}  # what the driver broadcasts after each update
    update_without_ray(learner, batch_data(learner, [0] * 8))
    published[1] = learner.get_weights("old")
    assert learner.version == 1

    data = batch_data(learner, [0, 1, 1, 0, 1, 0, 0, 1])  # a lag-1 batch: half drawn before the update
    xt, t = torch.randn(8, *learner.policy.latent_shape), torch.linspace(0.2, 0.9, 8)
    v_old = learner.old_velocity(xt, t, data["embeds"], data["pooled"], versions=data["version"])

    sampler = Sampler(policy_cfg, SamplerConfig(), device="cpu")
    expected = torch.empty_like(v_old)
    current = None
    for version in (0, 1):
        sampler.load_weights(published[version], version)
        index = (data["version"] == version).nonzero().squeeze(1)
        with torch.no_grad(), sampler.policy.adapter(OLD):
            expected[index] = sampler.policy.velocity(xt[index], t[index], data["embeds"][index],
                                                      data["pooled"][index])
            if version == 1:
                current = sampler.policy.velocity(xt, t, data["embeds"], data["pooled"])
    torch.testing.assert_close(v_old, expected)
    lagged = data["version"] == 0
    assert not torch.allclose(v_old[lagged], current[lagged], atol=1e-4)  # θ_old moved: the version matters

    update_without_ray(learner, batch_data(learner, [0, 1] * 4))  # trains on the lag-1 batch, then version 2
    assert sorted(learner.old_versions) == [1, 2]
    with pytest.raises(RuntimeError, match=r"version 0, but the learner \(at version 2, max_policy_lag 1\)"):
        learner.old_velocity(xt, t, data["embeds"], data["pooled"], versions=data["version"])


def test_synchronous_learner_keeps_no_history(policy_cfg):
    learner = Learner(policy_cfg, LearnerConfig(micro_batch_size=8), seed=0)
    assert learner.old_versions == {} and learner.policy.adapters == ("theta", "old")
    data = batch_data(learner, [0] * 8)
    update_without_ray(learner, data)
    with pytest.raises(RuntimeError, match="holds versions"):
        learner.old_velocity(torch.randn(8, *learner.policy.latent_shape), torch.full((8,), 0.5), data["embeds"],
                             data["pooled"], versions=data["version"])
