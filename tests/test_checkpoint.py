"""Checkpoints: diffusers LoRA format a stock pipeline loads, complete learner state, and resume == no interruption."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from actors.policy import THETA, Policy
from configs.load import load_config
from configs.schema import LearnerConfig, LoraConfig, PolicyConfig
from learner.checkpoint import LORA_FILE, latest_checkpoint, read_lora, resolve_resume, save_lora
from learner.learner import Learner

LORA = LoraConfig(rank=4, alpha=8)  # alpha != rank: a loader that ignored the saved alpha would scale wrongly


@pytest.fixture(scope="module")
def policy_cfg(tiny_pipeline):
    return PolicyConfig(pretrained=tiny_pipeline, resolution=32, lora=LORA)


def test_stock_diffusers_pipeline_loads_our_lora(policy_cfg, tiny_pipeline, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    policy = Policy.from_pretrained(policy_cfg)
    with torch.no_grad():
        for p in policy.lora_parameters(THETA).values():
            p.add_(0.05 * torch.randn_like(p))
    save_lora(tmp_path / "theta", policy.get_weights(THETA), LORA)
    assert (tmp_path / "theta" / LORA_FILE).is_file()
    # The tiny pipeline has no VAE (pixel space; model_index says vae: null): a stock load must be told so.
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_pipeline, text_encoder_3=None, tokenizer_3=None, vae=None)
    pipe.load_lora_weights(tmp_path / "theta")
    embeds, pooled = policy.encode(["a photo of a red circle", "a photo of two blue squares"])
    xt, t = torch.randn(2, *policy.latent_shape), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v_ours = policy.velocity(xt, t, embeds, pooled)
        v_stock = pipe.transformer(hidden_states=xt, timestep=1000 * t, encoder_hidden_states=embeds,
                                   pooled_projections=pooled, return_dict=False)[0]
        with policy.adapter(None):
            v_base = policy.velocity(xt, t, embeds, pooled)
    torch.testing.assert_close(v_stock, v_ours)
    assert not torch.allclose(v_ours, v_base)  # the LoRA does something, so the match above means something
    weights, lora = read_lora(tmp_path / "theta")
    assert lora == LORA
    assert all(torch.equal(weights[k], v) for k, v in policy.get_weights(THETA).items())


def synthetic_batch(policy: Policy, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    embeds, pooled = policy.encode(["a photo of a red circle"] * n)
    return {"x0": torch.randn(n, *policy.latent_shape, generator=g), "embeds": embeds, "pooled": pooled,
            "timesteps": torch.linspace(0.9, 0.1, 4).repeat(n, 1), "r": torch.rand(n, generator=g),
            "version": torch.zeros(n, dtype=torch.long)}


def test_learner_state_restores_everything_a_step_depends_on(policy_cfg):
    cfg = LearnerConfig(micro_batch_size=4, lr=1e-2)
    first = Learner(policy_cfg, cfg, seed=3)
    data = synthetic_batch(first.policy)
    first._optimizer_step(data)
    saved = copy.deepcopy(first.state(with_weights=True))  # as the trip through Ray and disk would: no aliasing
    second = Learner(policy_cfg, cfg, seed=99)  # other seed: every generator and weight must come from `saved`
    second.load_state(saved, saved["rng"], version=first.version)
    assert first._optimizer_step(data) == second._optimizer_step(data)
    assert first.checksum() == second.checksum() and second.step == 2


def test_resolve_resume(tmp_path):
    assert resolve_resume("never", tmp_path) is None and resolve_resume("auto", tmp_path) is None
    for name in ("step_00002", "step_00010", "step_00011.partial"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00010" == resolve_resume("auto", tmp_path)
    assert resolve_resume(str(tmp_path / "step_00002"), tmp_path) == tmp_path / "step_00002"
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)


# ---- the run: stopped and resumed == uninterrupted (synchronous schedule, CPU, real local Ray) ----------------------
# The cut run's first update comes from a start as fresh as the whole run's, so the equalities below also show the
# synchronous schedule deterministic from one run to the next.
SYNC = ["prompts.group_size=4", "schedule.groups_per_update=2", "schedule.buffer_capacity=8",
        "learner.micro_batch_size=4", "sampler.num_actors=1", "sampler.groups_per_call=1", "sampler.num_steps=4",
        "schedule.max_policy_lag=0", "schedule.max_inflight=1", "prompts.test=null",
        "eval.in_distribution_images_per_prompt=0", "run.grid_every=0",
        "run.progress=false", "learner.lr=1e-3", "run.num_updates=4", "policy.lora.rank=4", "policy.lora.alpha=8",
        "reward.weights={jpeg_compressibility: 1.0}"]  # a random policy scores 0 on shapes: no advantages


def updates(run_dir) -> list[dict]:
    log = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [r for r in records if r["kind"] == "update"]


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_uninterrupted(local_ray, tiny_pipeline, tmp_path, monkeypatch):
    import deploy.runtime
    from deploy.train import train

    def config(name, *extra):
        return load_config("configs/tiny_cpu.yaml", [f"policy.pretrained={tiny_pipeline}",
                                                     f"run.output_dir={tmp_path}", f"run.name={name}", *SYNC, *extra])

    train(config("whole", "run.checkpoint_every=0"))

    class CrashingLearnerGroup(deploy.runtime.LearnerGroup):
        """Loses its rank during update 2 (replaced from its state after update 1, the update retried), then dies at
        the 4th update, after the checkpoint of update 2 and the log line of update 3."""

        killed = False

        def update_async(self, batch):
            if len(updates(tmp_path / "cut")) == 3:
                raise RuntimeError("simulated crash")
            refs = super().update_async(batch)
            if len(updates(tmp_path / "cut")) == 1 and not CrashingLearnerGroup.killed:
                CrashingLearnerGroup.killed = True
                local_ray.kill(self.ranks[0], no_restart=True)  # the update just submitted dies with it
            return refs

    with monkeypatch.context() as patch:
        patch.setattr(deploy.runtime, "LearnerGroup", CrashingLearnerGroup)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(config("cut", "run.checkpoint_every=2"))
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step_00002"
    train(config("cut", "run.checkpoint_every=2", "run.resume=auto"))

    whole, cut = updates(tmp_path / "whole"), updates(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]  # update 3 of the crashed attempt was dropped from the log
    # The rank lost during update 2 was replaced once; the equalities below show the recovery changed nothing.
    assert CrashingLearnerGroup.killed and [r["learner_recoveries"] for r in cut[:2]] == [0, 1]
    assert all(r["learner_recoveries"] == 0 for r in whole)
    for key in ("loss", "reward", "grad_norm", "version", "optimizer_step"):
        assert [r[key] for r in cut] == [r[key] for r in whole], key
    final = {name: tmp_path / name / "checkpoints" / "step_00004" for name in ("whole", "cut")}
    for adapter in ("theta", "old", "ema"):
        a, b = (load_file(final[n] / adapter / LORA_FILE) for n in ("whole", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), adapter
    states = [json.loads((final[n] / "state.json").read_text()) for n in ("whole", "cut")]
    assert states[0]["prompts"] == states[1]["prompts"] == {"position": 8, "seed": 0}
    assert states[0]["version"] == states[1]["version"] == 4
    optimizers = [torch.load(final[n] / "training_state.pt", weights_only=True)["learner"][0]["optimizer"]
                  for n in ("whole", "cut")]
    moments = [[s["exp_avg_sq"] for s in o["state"].values()] for o in optimizers]
    assert all(torch.equal(x, y) for x, y in zip(*moments, strict=True))
