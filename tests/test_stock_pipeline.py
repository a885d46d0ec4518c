"""The solver-agnostic check: a stock diffusers StableDiffusion3Pipeline with our LoRA draws what our policy draws."""

import json

import pytest
import torch

from actors.evaluation import eval_groups
from actors.policy import THETA, Policy
from actors.prompts import read_prompts
from actors.solvers import sigma_schedule, solve
from configs.schema import LoraConfig, PolicyConfig
from learner.checkpoint import save_lora

LORA = LoraConfig(rank=4, alpha=8)


def perturbed_policy(tiny_pipeline: str) -> Policy:
    policy = Policy.from_pretrained(PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LORA))
    with torch.no_grad():
        for p in policy.lora_parameters(THETA).values():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    return policy


def test_stock_euler_with_our_lora_draws_what_our_euler_draws(tiny_pipeline, tmp_path):
    from bench.stock_pipeline import load_stock, sample

    policy = perturbed_policy(tiny_pipeline)
    save_lora(tmp_path / "theta", policy.get_weights(THETA), LORA)
    groups = eval_groups(read_prompts("configs/prompts/shapes_test.jsonl")[:3], images_per_prompt=2)
    stock = sample(load_stock(tiny_pipeline, str(tmp_path / "theta")), groups, steps=6, resolution=32)

    embeds, pooled = policy.encode([g.prompt for g in groups for _ in g.seeds])
    noise = torch.stack([torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(s))
                         for g in groups for s in g.seeds])
    with torch.no_grad(), policy.adapter(THETA):
        x0 = solve(lambda x, t: policy.velocity(x, t, embeds, pooled), noise, sigma_schedule(6, policy.shift), "euler")
        with policy.adapter(None):
            base = solve(lambda x, t: policy.velocity(x, t, embeds, pooled), noise, sigma_schedule(6, policy.shift),
                         "euler")
    ours = policy.decode(x0)
    assert stock.shape == ours.shape == (6, 32, 32, 3)
    assert abs(stock.astype(int) - ours.astype(int)).max() <= 1  # uint8 rounding of float-close images
    assert (policy.decode(base) != ours).any()  # the LoRA changes the images, so the match above means something


def test_check_writes_before_and_after_per_set(tiny_pipeline, tmp_path):
    from bench.stock_pipeline import main
    from configs.load import dump_config, load_config

    policy = perturbed_policy(tiny_pipeline)
    checkpoint = tmp_path / "step_00001"
    save_lora(checkpoint / "theta", policy.get_weights(THETA), LORA)
    cfg = load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", "policy.lora.rank=4",
                                                "policy.lora.alpha=8"])
    (checkpoint / "config.yaml").write_text(dump_config(cfg))
    assert main(["--checkpoint", str(checkpoint), "--steps", "3", "eval.num_prompts=3"]) == 0
    result = json.loads((checkpoint / "stock_pipeline.json").read_text())
    assert set(result["sets"]) == {"in-distribution", "held-out"} and result["steps"] == 3
    held = result["sets"]["held-out"]
    assert held["before"]["images"] == 3 * cfg.eval.images_per_prompt
    assert held["lift"] == pytest.approx(held["after"]["mean"] - held["before"]["mean"])
    assert main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
