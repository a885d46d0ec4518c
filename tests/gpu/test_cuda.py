"""CUDA-only checks: the tiny policy samples and takes an NFT update on a GPU in bf16 (skipped without CUDA)."""

import pytest
import torch

from actors.policy import OLD, THETA, Policy
from actors.prompts import PromptGroup
from actors.sampler import Sampler
from configs.schema import LoraConfig, PolicyConfig, SamplerConfig
from learner.nft import nft_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_sampler_on_cuda(tiny_pipeline):
    cfg = PolicyConfig(pretrained=tiny_pipeline, resolution=32, dtype="bfloat16", lora=LoraConfig(rank=4, alpha=8))
    sampler = Sampler(cfg, SamplerConfig(num_steps=4), device="cuda")
    [group] = sampler.sample([PromptGroup(0, "a photo of a red circle", {}, (1, 2, 3, 4))])
    assert group.x0.shape == (4, 3, 32, 32) and torch.isfinite(group.x0).all()


def test_nft_step_on_cuda_bf16(tiny_pipeline):
    cfg = PolicyConfig(pretrained=tiny_pipeline, resolution=32, dtype="bfloat16", lora=LoraConfig(rank=4, alpha=8))
    policy = Policy.from_pretrained(cfg, device="cuda")
    embeds, pooled = policy.encode(["a photo of a red circle"] * 4)
    x0, t = torch.randn(4, *policy.latent_shape, device="cuda"), torch.rand(4, device="cuda").clamp(0.05, 0.95)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * torch.randn_like(x0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.no_grad(), policy.adapter(OLD):
            v_old = policy.velocity(xt, t, embeds, pooled)
        with torch.no_grad(), policy.adapter(None):
            v_ref = policy.velocity(xt, t, embeds, pooled)
        with policy.adapter(THETA):
            v_theta = policy.velocity(xt, t, embeds, pooled)
    loss, _ = nft_loss(v_theta=v_theta, v_old=v_old, v_ref=v_ref, x0=x0, xt=xt, t=t, r=torch.rand(4, device="cuda"),
                       nft_beta=1.0, kl_coef=1e-4, adv_clip_max=5.0)
    loss.backward()
    grads = [p.grad for p in policy.lora_parameters(THETA).values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pretrain_on_cuda_writes_a_pipeline_that_loads_on_cpu(tmp_path):
    from deploy import pretrain

    out = pretrain.main(["--out", str(tmp_path / "base"), "--device", "cuda", "--steps", "3", "--batch-size", "4",
                         "--dataset-size", "64", "--save-every", "0", "--heads", "3"])
    assert '"device": "cuda"' in (out / "pretrain.json").read_text()
    cfg = PolicyConfig(pretrained=str(out), resolution=32, lora=LoraConfig(rank=4, alpha=8))
    sampler = Sampler(cfg, SamplerConfig(num_steps=4), device="cpu")
    [group] = sampler.sample([PromptGroup(0, "a red circle", {}, (1, 2))])
    assert group.images.shape == (2, 32, 32, 3) and torch.isfinite(group.x0).all()
