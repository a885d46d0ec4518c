"""The decoupled runtime end to end on a real local Ray: 2 learner ranks over gloo, 2 samplers, 2 reward replicas."""

import json

import pytest

from configs.load import load_config
from deploy.train import train

pytestmark = pytest.mark.slow

SMALL = ["prompts.group_size=4", "schedule.groups_per_update=4", "schedule.buffer_capacity=16",
         "learner.micro_batch_size=4", "sampler.num_steps=4", "sampler.groups_per_call=1", "eval.num_steps=4",
         "eval.num_prompts=4", "run.grid_every=2", "run.progress=false", "learner.lr=1e-3",
         "schedule.max_policy_lag=1", "schedule.max_inflight=2", "learner.num_threads=1"]  # the overlapped schedule


def run(tiny_pipeline, tmp_path, name, *extra):
    cfg = load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", f"run.output_dir={tmp_path}",
                                                f"run.name={name}", *SMALL, *extra])
    results = train(cfg)
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return cfg, results, records


# reward.autoscale on, with a target no load of this run reaches: the set drains from 2 replicas to 1 while it runs
AUTOSCALE = ["reward.autoscale.enabled=true", "reward.autoscale.min_replicas=1", "reward.autoscale.max_replicas=2",
             "reward.autoscale.target_outstanding=100", "reward.autoscale.window_s=2",
             "reward.autoscale.interval_s=0.5"]


def test_two_ranks_two_samplers_two_replicas(local_ray, tiny_pipeline, tmp_path):
    cfg, results, records = run(tiny_pipeline, tmp_path, "overlap", "run.num_updates=3", "learner.num_ranks=2",
                                "learner.num_cpus=0.5", "sampler.num_actors=2", "reward.replicas=2",
                                "eval.images_per_prompt=1", "eval.in_distribution_images_per_prompt=2", *AUTOSCALE)
    updates = [r for r in records if r["kind"] == "update"]
    assert [r["step"] for r in updates] == [1, 2, 3] and [r["version"] for r in updates] == [1, 2, 3]
    assert all(r["policy_lag"] <= cfg.schedule.max_policy_lag for r in updates)
    assert all(r["samples"] == 4 * 4 // 2 for r in updates)  # each rank trains on its half of the batch
    final = next(r for r in records if r["kind"] == "final")
    assert len(set(final["learner_checksums"])) == 1, final["learner_checksums"]  # DDP kept the ranks identical
    assert final["failed_groups"] == 0 and final["reward_retries"] == 0  # the drained replica lost no request
    scaled = [(r["action"], r["was"], r["replicas"]) for r in records if r["kind"] == "reward_scale"]
    assert scaled == [("scale_down", 2, 1)], scaled
    assert set(results["before"]) == set(results["after"]) == {"in-distribution", "held-out"}
    for name, result in results["after"].items():
        assert result.means.keys() >= {"shapes", "shapes_strict"} and result.version == 3 and result.name == name
        assert result.num_images == 4 * (1 if name == "held-out" else 2)  # eval.num_prompts rows of each set
        assert all(0 <= result.intervals[k] < 1 for k in result.means)
    run_dir = tmp_path / "overlap"
    assert (run_dir / "curves.png").is_file() and (run_dir / "grids" / "train_00002.png").is_file()
    assert (run_dir / "grids" / "eval_held-out_00000.png").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "grids" / "eval_in-distribution_00003.png").is_file()
    evals = [(r["step"], r["set"]) for r in records if r["kind"] == "eval"]
    assert evals == [(0, "in-distribution"), (0, "held-out"), (3, "in-distribution"), (3, "held-out")]


def test_failed_rewards_drop_groups_never_default(local_ray, tiny_pipeline, tmp_path):
    """Prompts whose metadata the shapes scorer rejects (422) make their groups fail: dropped and counted."""
    good = [json.loads(line) for line in open("configs/prompts/shapes_train.jsonl")][:6]
    bad = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}] * 2
    prompts = tmp_path / "mixed.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    _, _, records = run(tiny_pipeline, tmp_path, "failing", "run.num_updates=2", f"prompts.train={prompts}",
                        "eval.num_prompts=1")
    final = next(r for r in records if r["kind"] == "final")
    assert final["failed_groups"] > 0 and any("dog" in failure for failure in final["failures"]), final["failures"]
    assert final["added_groups"] >= 2 * 4  # training went on with the groups that scored
