"""Flow-GRPO through the runtime: a Sampler built with a noise level records SDE trajectories and log-probabilities,
the learner recomputes them (ratio 1 at θ = θ_old), and a run on a real local Ray trains with them."""

import json

import pytest
import torch

from actors.prompts import PromptGroup
from actors.sampler import Sampler
from configs.load import load_config
from configs.schema import FlowGrpoConfig, LearnerConfig, LoraConfig, PolicyConfig, SamplerConfig
from learner.learner import Learner

GRPO = ["algorithm=flow_grpo"]  # make run's recipe with Flow-GRPO, as docs/configuration.md says


@pytest.fixture(scope="module")
def policy_cfg(tiny_pipeline):
    return PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LoraConfig(rank=4, alpha=8))


def groups(n: int = 2) -> list[PromptGroup]:
    circle = {"tag": "single_object", "include": [{"class": "circle", "count": 1}]}
    return [PromptGroup(i, "a photo of a circle", circle, (10 * i, 10 * i + 1, 10 * i + 2)) for i in range(n)]


def learner_data(sampled) -> dict[str, torch.Tensor]:
    """Two sampled groups of 3 as a rank's shard: trajectories, log-probs, conditioning, advantages."""
    parts = [g.for_learner() for g in sampled]
    return {"latents": torch.cat([p.latents for p in parts]), "log_probs": torch.cat([p.log_probs for p in parts]),
            "x0": torch.cat([p.x0 for p in parts]), "version": torch.zeros(6, dtype=torch.long),
            "timesteps": torch.stack([p.timesteps for p in parts for _ in range(3)]),
            "embeds": torch.stack([p.embeds for p in parts for _ in range(3)]),
            "pooled": torch.stack([p.pooled for p in parts for _ in range(3)]),
            "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])}


def test_learner_recomputes_the_samplers_log_probs(policy_cfg):
    learner = Learner(policy_cfg, LearnerConfig(micro_batch_size=6), seed=0, flow_grpo=FlowGrpoConfig())
    sampler = Sampler(policy_cfg, SamplerConfig(num_steps=5), noise_level=0.7, device="cpu")
    sampler.load_weights(learner.publish("old")[0], 0)  # θ_old = θ, as Flow-GRPO samples
    sampled = sampler.sample(groups())
    group = sampled[0]
    assert group.latents.shape == (3, 6, *group.x0.shape[1:]) and group.log_probs.shape == (3, 5)
    torch.testing.assert_close(group.latents[:, -1], group.x0)
    torch.testing.assert_close(group.latents[:, 0], torch.stack([
        torch.randn(group.x0.shape[1:], generator=torch.Generator().manual_seed(seed)) for seed in group.seeds]))
    again = sampler.sample(groups())  # the SDE's noise is seeded: a rerun draws the same trajectories
    torch.testing.assert_close(again[1].latents, sampled[1].latents)

    data = learner_data(sampled)
    for step in range(5):
        _, metrics = learner._grpo_loss(data, torch.full((6,), step))
        assert abs(metrics["ratio"].item() - 1) < 1e-4, (step, metrics["ratio"].item())
        assert metrics["clip_fraction"].item() == 0.0
    with torch.no_grad():  # move θ: the same transitions now have another probability under it
        for p in learner.theta.values():
            p.add_(0.5 * torch.randn_like(p))
    _, moved = learner._grpo_loss(data, torch.full((6,), 2))
    assert moved["clip_fraction"].item() > 0  # some ratios left [1 − 1e-4, 1 + 1e-4]: the clip acts


def test_flow_grpo_copies_theta_into_theta_old_whatever_nfts_schedule_says(policy_cfg, tiny_pipeline):
    cfg = load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", "algorithm=flow_grpo"])
    assert cfg.learner.old_policy.cap == 0.5  # make run's NFT schedule, left as it is
    learner = Learner(policy_cfg, LearnerConfig(micro_batch_size=6, old_policy=cfg.learner.old_policy), seed=0,
                      flow_grpo=FlowGrpoConfig())
    sampler = Sampler(policy_cfg, SamplerConfig(num_steps=5), noise_level=0.7, device="cpu")
    sampler.load_weights(learner.publish("old")[0], 0)
    data = learner_data(sampler.sample(groups()))
    learner.step = 1000  # where NFT's schedule would keep half of the previous θ_old
    learner._shard = lambda batch: data  # the batch's tensors, as a rank would fetch them from the object store
    before = {key: old.clone() for key, old in learner.old.items()}
    result = learner.update(None)
    assert result["old_decay"] == 0.0 and result["optimizer_step"] == 1001
    assert any(not torch.equal(before[key], old) for key, old in learner.old.items())  # θ moved, θ_old with it
    for key, old in learner.old.items():
        torch.testing.assert_close(old, learner.theta[key].detach(), rtol=0, atol=0)


@pytest.mark.slow
def test_flow_grpo_run(local_ray, tiny_pipeline, tmp_path):
    """`deploy.train configs/tiny_cpu.yaml algorithm=flow_grpo`, shrunk, on a real local Ray: 2 Samplers, 2 learner
    ranks, a reward replica. Twice: the synchronous schedule gives the same losses and the same final θ."""
    from deploy.train import train

    def run(name: str) -> list[dict]:
        train(load_config("configs/tiny_cpu.yaml", [
            f"policy.pretrained={tiny_pipeline}", f"run.output_dir={tmp_path}", f"run.name={name}", *GRPO,
            "prompts.group_size=4", "schedule.groups_per_update=2", "learner.micro_batch_size=2",
            "sampler.num_steps=4", "sampler.num_actors=2", "sampler.groups_per_call=1", "learner.num_ranks=2",
            "learner.num_threads=1", "prompts.test=null", "eval.in_distribution_images_per_prompt=0",
            "run.grid_every=0", "run.progress=false", "run.num_updates=3", "run.checkpoint_every=0",
            "policy.lora.rank=4", "policy.lora.alpha=8"]))
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    records = run("grpo")
    updates = [r for r in records if r["kind"] == "update"]
    assert len(updates) == 3
    for record in updates:  # θ_old = θ drew the data: the ratio moves only in an update's second optimizer step
        assert abs(record["ratio"] - 1) < 1e-4 and record["optimizer_step"] == 2 * record["step"]
        assert record["old_decay"] == 0.0 and "positive_loss" not in record
    final = next(r for r in records if r["kind"] == "final")
    assert final["failed_groups"] == 0 and final["verified_broadcasts"] >= 3
    assert len(final["learner_checksums"]) == 2 and len(set(final["learner_checksums"])) == 1  # DDP kept ranks equal

    again = run("grpo_again")
    assert [(r["loss"], r["policy_loss"], r["grad_norm"]) for r in updates] == [
        (r["loss"], r["policy_loss"], r["grad_norm"]) for r in again if r["kind"] == "update"]
    assert next(r for r in again if r["kind"] == "final")["learner_checksums"] == final["learner_checksums"]
