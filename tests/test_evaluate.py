"""`python -m deploy.evaluate`: dataset → prompts and scorer, LoRA from a checkpoint, metrics equal to the run's own."""

import json

import pytest
import torch
import yaml

from actors.policy import THETA, Policy
from configs.load import dump_config, load_config
from deploy.evaluate import DATASETS, PROMPTS, build_config, locate, main, parse_args
from learner.checkpoint import save_lora


@pytest.fixture(scope="module")
def checkpoint(tiny_pipeline, tmp_path_factory):
    """A checkpoint folder as a run writes it (θ with rank 4, alpha 8; version 3), without running one."""
    cfg = load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}", "policy.lora.rank=4",
                                                "policy.lora.alpha=8"])
    path = tmp_path_factory.mktemp("run") / "step_00003"
    policy = Policy.from_pretrained(cfg.policy)
    with torch.no_grad():
        for p in policy.lora_parameters(THETA).values():
            p.add_(0.01)
    save_lora(path / "theta", policy.get_weights(THETA), cfg.policy.lora)
    (path / "state.json").write_text(json.dumps({"step": 3, "version": 3}))
    (path / "config.yaml").write_text(dump_config(cfg))
    return path, cfg, policy.get_weights(THETA)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_dataset_picks_prompt_file_and_scorer(dataset, checkpoint):
    path, trained, theta = checkpoint
    args = parse_args(["--dataset", dataset, "--checkpoint", str(path), "--num-steps", "7", "--num-prompts", "5"])
    cfg, weights = build_config(args, *locate(args.checkpoint)[:2])
    prompt_file, scorer = DATASETS[dataset]
    assert (PROMPTS / prompt_file).is_file() and cfg.prompts.test == str(PROMPTS / prompt_file)
    assert cfg.reward.weights == {scorer: 1.0} and cfg.eval.num_steps == 7 and cfg.eval.num_prompts == 5
    assert cfg.policy == trained.policy  # the checkpoint's own config: same base, same LoRA shape
    assert weights.keys() == theta.keys() and all(torch.equal(weights[k], theta[k]) for k in theta)


def test_base_policy_and_options(checkpoint):
    args = parse_args(["--dataset", "drawbench", "--scorer", "clipscore", "--policy", "some/hub-model",
                       "--guidance-scale", "4.5", "--reward-url", "http://127.0.0.1:9", "--reward-url",
                       "http://127.0.0.1:10"])
    assert locate(args.checkpoint) == (None, None, 0)
    cfg, weights = build_config(args, None, None)
    assert weights is None and cfg.policy.pretrained == "some/hub-model" and cfg.eval.guidance_scale == 4.5
    assert cfg.reward.weights == {"clipscore": 1.0} and cfg.reward.urls == ("http://127.0.0.1:9", "http://127.0.0.1:10")


def test_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["--dataset", "shapes", "--checkpoint", str(tmp_path)]) == 2
    assert "neither state.json" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_matches_the_runs_own_evaluations(local_ray, tiny_pipeline, tmp_path):
    """A short run evaluates before and after; the CLI on the base policy and on the final checkpoint agrees."""
    from deploy.train import train

    cfg = load_config("configs/tiny_cpu.yaml", [
        f"policy.pretrained={tiny_pipeline}", f"run.output_dir={tmp_path}", "run.name=short", "run.num_updates=2",
        "prompts.group_size=4", "schedule.groups_per_update=2", "schedule.buffer_capacity=8",
        "learner.micro_batch_size=4", "learner.lr=1e-2", "sampler.num_actors=1", "sampler.groups_per_call=1",
        "sampler.num_steps=4", "eval.num_steps=4", "eval.num_prompts=4", "run.grid_every=0", "run.progress=false",
        "reward.weights={jpeg_compressibility: 1.0}"])  # a random policy scores 0 on shapes: compare a live score
    results = train(cfg)
    run_dir = tmp_path / "short"
    common = ["--dataset", "shapes", "--scorer", "jpeg_compressibility", "--num-prompts", "4"]
    assert main([*common, "--checkpoint", str(run_dir / "checkpoints" / "step_00002")]) == 0
    assert main([*common, "--config", str(run_dir / "config.yaml"), "--out", str(tmp_path / "base")]) == 0

    after = json.loads((run_dir / "checkpoints" / "step_00002" / "eval_shapes" / "metrics.json").read_text())
    before = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert after["means"] == results["after"]["held-out"].means
    assert before["means"] == results["before"]["held-out"].means
    assert after["intervals95"] == results["after"]["held-out"].intervals
    assert after["means"] != before["means"]  # training moved θ, so the two evaluations test different weights
    assert after["version"] == 2 and after["num_prompts"] == 4 and after["failed_groups"] == 0
    tags = {json.loads(line)["tag"] for line in open("configs/prompts/shapes_test.jsonl").readlines()[:4]}
    assert set(after["per_tag"]) == tags and (tmp_path / "base" / "grid.png").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["policy"]["pretrained"] == before["policy"]
