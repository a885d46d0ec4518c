"""Config loading: presets validate, overrides apply, wrong keys and values fail with the key and the fix."""

from pathlib import Path

import pytest

from configs.load import ConfigError, apply_override, load_config
from deploy.train import main

PRESETS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_validate(path):
    cfg = load_config(path)
    assert cfg.reward.weights and cfg.policy.pretrained


def test_reference_hyperparameters_in_presets():
    ocr = load_config("configs/sd3_ocr.yaml")
    assert (ocr.learner.nft_beta, ocr.learner.gradient_steps_per_update) == (0.1, 2)
    schedule = ocr.learner.old_policy
    assert (schedule.flat, schedule.uprate, schedule.cap) == (75, 0.0075, 0.999)
    multi = load_config("configs/sd3_multi_reward.yaml")
    assert multi.reward.weights == {"pickscore": 1.0, "hpsv2": 1.0, "clipscore": 1.0}
    assert (multi.sampler.num_steps, multi.learner.nft_beta) == (25, 0.1)
    geneval = load_config("configs/sd3_geneval.yaml")
    assert geneval.schedule.groups_per_update * geneval.prompts.group_size == 48 * 24
    assert (geneval.learner.kl_coef, geneval.learner.adv_clip_max, geneval.sampler.guidance_scale) == (1e-4, 5.0, 1.0)


def test_override_parses_yaml_values():
    cfg = load_config("configs/tiny_cpu.yaml", ["learner.lr=1e-4", "learner.global_std=false", "run.name=x"])
    assert (cfg.learner.lr, cfg.learner.global_std, cfg.run.name) == (1e-4, False, "x")


@pytest.mark.parametrize("override, needle", [
    ("learner.lrr=1", "learner.lrr: unknown key"),
    ("learner.lr=-1", "learner.lr"),
    ("sampler.solver=heun", "sampler.solver"),
    ("schedule.max_inflight=2", "needs schedule.max_inflight 1"),  # tiny_cpu runs max_policy_lag 0
    ("learner.micro_batch_size=7", "must be a multiple of learner.num_ranks"),
    ("reward.replicas=0", "no reward server"),
    ("sampler.num_steps=3", "= 0 timesteps per sample: raise learner.timestep_fraction"),  # 3 × 0.3 rounds to 0
    ("learner.mixed_precision=no", "quote the word, e.g. learner.mixed_precision='no'"),  # YAML's no is False
], ids=["unknown-key", "negative-lr", "bad-solver", "sync-needs-one-inflight", "batch-divisibility", "no-reward",
        "no-training-timestep", "yaml-bool-word"])
def test_bad_config_names_key_and_fix(override, needle):
    with pytest.raises(ConfigError, match=None) as error:
        load_config("configs/tiny_cpu.yaml", [override])
    assert needle in str(error.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "learner.lr")


def test_cli_exits_nonzero_on_bad_config(capsys):
    assert main(["configs/tiny_cpu.yaml", "learner.nft_betta=1"]) == 2
    assert "learner.nft_betta: unknown key" in capsys.readouterr().err
    assert main(["configs/missing.yaml"]) == 2
