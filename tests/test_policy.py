"""The policy's one loading path on a tiny SD3-architecture pipeline: load → LoRA → encode → sample → decode."""

import numpy as np
import pytest
import torch

from actors.policy import OLD, THETA, Policy
from actors.prompts import PromptGroup
from actors.sampler import Sampler
from configs.schema import LoraConfig, PolicyConfig, SamplerConfig


@pytest.fixture(scope="module")
def policy_cfg(tiny_pipeline):
    return PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LoraConfig(rank=4, alpha=8))


@pytest.fixture(scope="module")
def policy(policy_cfg):
    return Policy.from_pretrained(policy_cfg)


def test_encode_shapes_and_word_tokens(policy):
    embeds, pooled = policy.encode(["a photo of a red circle", "a photo of two squares"])
    joint = policy.transformer.config.joint_attention_dim
    assert embeds.shape == (2, policy.family.tokenizers[0].model_max_length, joint)
    assert pooled.shape == (2, policy.transformer.config.pooled_projection_dim)
    ids = policy.family.tokenizers[0]("a photo of a red circle").input_ids
    assert len(ids) == 2 + 6 and policy.family.tokenizers[0].unk_token_id not in ids  # one token per word, bos/eos


def test_adapters_theta_old_ref(policy):
    embeds, pooled = policy.encode(["a photo of a red circle"] * 2)
    xt, t = torch.randn(2, *policy.latent_shape), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        for p in policy.lora_parameters(THETA).values():
            p.add_(0.05 * torch.randn_like(p))
        v_theta = policy.velocity(xt, t, embeds, pooled)
        with policy.adapter(None):
            v_ref = policy.velocity(xt, t, embeds, pooled)
        with policy.adapter(OLD):
            v_old = policy.velocity(xt, t, embeds, pooled)
    assert not torch.allclose(v_theta, v_ref)
    torch.testing.assert_close(v_old, v_ref)  # θ_old's B matrices start at zero: base behaviour
    policy.load_weights(policy.get_weights(THETA), OLD)
    with torch.no_grad(), policy.adapter(OLD):
        torch.testing.assert_close(policy.velocity(xt, t, embeds, pooled), v_theta)
    assert all(p.requires_grad for p in policy.lora_parameters(THETA).values())
    assert not any(p.requires_grad for p in policy.lora_parameters(OLD).values())


def test_wrong_lora_weights_are_refused(policy):
    with pytest.raises(ValueError, match="1 unknown keys"):
        policy.load_weights({"transformer_blocks.99.attn.to_q.lora_A.weight": torch.zeros(4, 128)}, OLD)


@pytest.mark.parametrize("pretrained, needle", [("/nonexistent/dir", "not a directory"),
                                                ("configs", "no model_index.json")], ids=["missing", "not-pipeline"])
def test_bad_pretrained_path(pretrained, needle):
    with pytest.raises(ValueError, match=needle):
        Policy.from_pretrained(PolicyConfig(pretrained=pretrained, resolution=32))


def test_lora_targets_must_match(tiny_pipeline):
    with pytest.raises(ValueError, match="attn.nothing"):
        Policy.from_pretrained(PolicyConfig(pretrained=tiny_pipeline, resolution=32,
                                            lora=LoraConfig(target_modules=("attn.nothing",))))


@pytest.mark.parametrize("solver", ["euler", "dpm2", "unipc"])
def test_sampler_round_trip(policy_cfg, solver):
    sampler = Sampler(policy_cfg, SamplerConfig(solver=solver, num_steps=4), device="cpu")
    group = PromptGroup(0, "a photo of a red circle", {"tag": "colors"}, (1, 2, 3))
    [out] = sampler.sample([group])
    assert out.x0.shape == (3, 3, 32, 32) and out.images.shape == (3, 32, 32, 3) and out.images.dtype == np.uint8
    assert out.timesteps.shape == (4,) and out.policy_version == 0 and out.embeds.dim() == 2
    [again] = sampler.sample([group])  # same seeds, same weights: the same images
    np.testing.assert_array_equal(out.images, again.images)
    sampler.load_weights(sampler.policy.get_weights(OLD), version=3)
    assert sampler.sample([group])[0].policy_version == 3


def test_classifier_free_guidance_changes_samples(policy_cfg):
    sampler = Sampler(policy_cfg, SamplerConfig(num_steps=3), device="cpu")
    group = PromptGroup(0, "a photo of a red circle", {}, (7,))
    weights = sampler.policy.get_weights(THETA)
    plain = sampler.evaluate([group], weights, 0, solver="euler", num_steps=3, guidance_scale=1.0)[0]
    guided = sampler.evaluate([group], weights, 0, solver="euler", num_steps=3, guidance_scale=4.0)[0]
    assert not torch.allclose(plain.x0, guided.x0)


def test_bf16_policy_gets_the_exact_timestep(policy_cfg):
    """In bf16, 1000·t would round (913.35 -> 916) while xt is noised with the exact t: the timestep stays float32."""
    policy = Policy.from_pretrained(policy_cfg.model_copy(update={"dtype": "bfloat16"}))
    seen = []
    handle = policy.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timestep"]), with_kwargs=True)
    embeds, pooled = policy.encode(["a photo of a red circle"])
    with torch.no_grad():
        policy.velocity(torch.randn(1, *policy.latent_shape), torch.tensor([0.91335]), embeds, pooled)
    handle.remove()
    assert seen[0].dtype == torch.float32
    assert seen[0].item() == pytest.approx(913.35, abs=1e-3)
