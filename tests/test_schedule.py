"""The overlapped schedule on a real local Ray when the learner is the slowest stage: samplers draw the next batch
while the learner trains, nothing admitted goes stale, and lagged samples are trained with their own θ_old."""

import json

import pytest

from configs.load import load_config
from deploy.train import train

pytestmark = pytest.mark.slow

# 4 solver steps per image, but every one of them trained on in micro-batches of 2: the learner is the bottleneck
OVERLAPPED = ["prompts.group_size=4", "schedule.groups_per_update=4", "schedule.buffer_capacity=16",
              "sampler.num_actors=2", "sampler.num_steps=4", "sampler.groups_per_call=1", "learner.micro_batch_size=2",
              "learner.timestep_fraction=1.0", "learner.num_threads=1", "schedule.max_policy_lag=1",
              "schedule.max_inflight=2", "prompts.test=null", "eval.in_distribution_images_per_prompt=0",
              "run.grid_every=0", "run.progress=false", "run.num_updates=6", "run.checkpoint_every=0",
              "policy.lora.rank=4", "policy.lora.alpha=8"]


def test_overlapped_schedule_wastes_nothing(local_ray, tiny_pipeline, tmp_path):
    cfg = load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", f"run.output_dir={tmp_path}",
                                                "run.name=overlap", *OVERLAPPED])
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "overlap" / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "update"]
    final = next(r for r in records if r["kind"] == "final")
    assert len(updates) == 6 and final["stale_groups"] == 0 and final["failed_groups"] == 0
    assert all(r["policy_lag"] <= 1 for r in updates)
    # the samplers worked ahead: later batches were drawn (partly) by the θ_old before the previous update
    assert sum(r["policy_lag"] == 1 for r in updates) >= 3, [r["policy_lag"] for r in updates]
    assert sum(r["lagged_samples"] for r in updates) > 0
    # what was sampled and not trained is at most the next batch, committed ahead of the last update
    trained = 6 * 4 * 4
    assert trained <= final_images(updates) <= trained + 4 * 4 * (1 + cfg.schedule.max_policy_lag)


def final_images(updates: list[dict]) -> int:
    return updates[-1]["images_sampled"]
