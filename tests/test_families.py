"""FLUX.1 and Qwen-Image behind the family contract, on tiny models built from configs in their diffusers layout:
save → from_pretrained, our velocity and Euler sample against the stock pipeline's, LoRA through load_lora_weights,
and a few NFT updates on a real local Ray."""

import json

import pytest
import torch

from actors.families.base import pack_2x2, unpack_2x2
from actors.families.flux import Flux
from actors.families.qwenimage import QwenImage
from actors.policy import OLD, THETA, Policy
from actors.solvers import solve
from actors.tiny_families import create_tiny_flux, create_tiny_qwenimage
from configs.schema import LoraConfig, PolicyConfig
from learner.checkpoint import read_lora, save_lora

LORA = LoraConfig(rank=4, alpha=8)
PROMPTS = ["a photo of a red circle", "a photo of two blue squares above a green triangle"]
FAMILIES = {"flux": (create_tiny_flux, Flux), "qwenimage": (create_tiny_qwenimage, QwenImage)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    build, cls = FAMILIES[request.param]
    return request.param, str(build(tmp_path_factory.mktemp(request.param))), cls


def load(pretrained: str) -> Policy:
    policy = Policy.from_pretrained(PolicyConfig(pretrained=pretrained, resolution=32, max_sequence_length=32,
                                                 lora=LORA))
    with torch.no_grad():  # θ away from θ_ref, so the LoRA checks below mean something
        for p in policy.lora_parameters(THETA).values():
            p.add_(0.1 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    return policy


def stock(name: str, pretrained: str, lora_dir=None):
    from diffusers import FluxPipeline, QwenImagePipeline

    pipe = {"flux": FluxPipeline, "qwenimage": QwenImagePipeline}[name].from_pretrained(pretrained)
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    return pipe


def stock_velocity(name, pipe, policy, xt, t, embeds, extra):
    """The stock transformer called as the stock pipeline's denoising loop calls it (its own packing and ids)."""
    b, c, h, w = xt.shape
    if name == "flux":
        guidance = torch.full((b,), 3.5)
        packed = pipe._pack_latents(xt, b, c, h, w)
        out = pipe.transformer(hidden_states=packed, timestep=t, guidance=guidance, pooled_projections=extra,
                               encoder_hidden_states=embeds, txt_ids=torch.zeros(embeds.shape[1], 3),
                               img_ids=pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                               return_dict=False)[0]
        return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
    packed = pipe._pack_latents(xt.unsqueeze(2), b, c, h, w)
    out = pipe.transformer(hidden_states=packed, timestep=t, encoder_hidden_states=embeds,
                           encoder_hidden_states_mask=extra, img_shapes=[[(1, h // 2, w // 2)]] * b,
                           return_dict=False)[0]
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                pipe.vae_scale_factor)[:, :, 0]


def test_from_pretrained_picks_the_family_and_round_trips(family, tmp_path):
    name, pretrained, cls = family
    policy = load(pretrained)
    assert isinstance(policy.family, cls) and policy.latent_shape == {"flux": (4, 16, 16), "qwenimage": (4, 8, 8)}[name]
    embeds, extra = policy.encode(PROMPTS)
    assert embeds.shape[:2] == (2, 32) and extra.shape[0] == 2
    xt, t = torch.randn(2, *policy.latent_shape), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v_theta = policy.velocity(xt, t, embeds, extra)
        with policy.adapter(None):
            v_ref = policy.velocity(xt, t, embeds, extra)
        with policy.adapter(OLD):
            torch.testing.assert_close(policy.velocity(xt, t, embeds, extra), v_ref)  # θ_old starts at θ_ref
    assert v_theta.shape == xt.shape and not torch.allclose(v_theta, v_ref)
    assert policy.decode(xt).shape == (2, 32, 32, 3)
    sigmas = policy.sigmas(4, shift=3.0)
    assert sigmas.shape == (5,) and sigmas[0] == 1 and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())
    # the pipeline saved by a stock save_pretrained loads again into an equal policy
    stock(name, pretrained).save_pretrained(tmp_path / "again")
    again = Policy.from_pretrained(policy.cfg.model_copy(update={"pretrained": str(tmp_path / "again")}))
    again.load_weights(policy.get_weights(THETA), THETA)
    with torch.no_grad():
        torch.testing.assert_close(again.velocity(xt, t, *again.encode(PROMPTS)), v_theta, rtol=0, atol=0)


def test_stock_pipeline_with_our_lora_gives_our_velocity(family, tmp_path):
    name, pretrained, _ = family
    policy = load(pretrained)
    save_lora(tmp_path / "theta", policy.get_weights(THETA), LORA)
    weights, lora = read_lora(tmp_path / "theta")
    assert lora == LORA.model_copy(update={"init": "gaussian"}) and weights.keys() == policy.get_weights(THETA).keys()
    pipe = stock(name, pretrained, tmp_path / "theta")
    embeds, extra = policy.encode(PROMPTS)
    ours_stock_encoding = pipe.encode_prompt(PROMPTS, max_sequence_length=32, **(
        {"prompt_2": None} if name == "flux" else {}))
    if name == "flux":  # (prompt_embeds, pooled, text_ids)
        torch.testing.assert_close(ours_stock_encoding[0], embeds)
        torch.testing.assert_close(ours_stock_encoding[1], extra)
    else:  # (prompt_embeds, mask) padded only to the longest prompt
        length = ours_stock_encoding[0].shape[1]
        torch.testing.assert_close(ours_stock_encoding[0], embeds[:, :length])
        assert bool((extra[:, length:] == 0).all()) and torch.equal(extra[:, :length], ours_stock_encoding[1])
    xt, t = torch.randn(2, *policy.latent_shape), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v_ours = policy.velocity(xt, t, embeds, extra)
        v_stock = stock_velocity(name, pipe, policy, xt, t, embeds, extra)
        with policy.adapter(None):
            v_base = policy.velocity(xt, t, embeds, extra)
    torch.testing.assert_close(v_stock, v_ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(v_base, v_ours, atol=1e-4)  # the LoRA moved it: the match above is the LoRA's


def test_stock_euler_sample_equals_ours(family, tmp_path):
    name, pretrained, _ = family
    policy = load(pretrained)
    save_lora(tmp_path / "theta", policy.get_weights(THETA), LORA)
    pipe = stock(name, pretrained, tmp_path / "theta")
    noise = torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(7))[None]  # (1, C, h, w)
    embeds, extra = policy.encode(PROMPTS[:1])
    with torch.no_grad():
        ours = solve(lambda x, t: policy.velocity(x, t, embeds, extra), noise, policy.sigmas(4, 3.0), "euler")
    kwargs = {"guidance_scale": 3.5} if name == "flux" else {"true_cfg_scale": 1.0}
    packed = pack_2x2(noise)  # both pipelines pack (B, C, h, w) [(B, C, 1, h, w) for Qwen-Image] this way
    out = pipe(prompt=PROMPTS[0], latents=packed, num_inference_steps=4, height=32, width=32, output_type="latent",
               max_sequence_length=32, **kwargs).images
    torch.testing.assert_close(unpack_2x2(out, *noise.shape[2:]), ours, rtol=1e-4, atol=1e-4)


def preset_on_cpu(preset: str, pretrained: str, output_dir, name: str):
    """A GPU preset as written, with only what this CPU machine cannot hold scaled down: the tiny model in place of
    the hub id, float32 at 32², no GPU reservations, one sampler / replica / rank, 2 updates of 2 groups × 2 images,
    and a reward that needs no hub weights (GenEval's detector cannot be downloaded here). Everything else (solver
    steps, timestep fraction, NFT settings, θ_old schedule, overlapped schedule, EMA evaluation) is the preset's."""
    from configs.load import load_config

    return load_config(preset, [
        f"policy.pretrained={pretrained}", "policy.resolution=32", "policy.dtype=float32",
        "policy.max_sequence_length=32", "policy.lora.rank=4", "policy.lora.alpha=8",
        f"run.output_dir={output_dir}", f"run.name={name}", "run.num_updates=2", "run.progress=false",
        "run.grid_every=0", "run.checkpoint_every=0", "prompts.group_size=2",
        "sampler.num_actors=1", "sampler.num_cpus=0.5", "sampler.num_gpus=0",
        "reward.weights={jpeg_compressibility: 1.0}", "reward.replicas=1", "reward.num_cpus=0.25",
        "reward.num_gpus=0", "learner.num_ranks=1", "learner.num_cpus=0.5", "learner.num_gpus=0",
        "learner.num_threads=1", "learner.mixed_precision='no'", "schedule.groups_per_update=2",
        "schedule.buffer_capacity=8", "eval.every=0", "eval.num_prompts=2"])


@pytest.mark.slow
def test_few_nft_updates_on_local_ray(family, local_ray, tmp_path):
    """`python -m deploy.train configs/<family>_geneval.yaml` with the policy pointed at the tiny model's folder."""
    from deploy.train import train

    name, pretrained, _ = family
    cfg = preset_on_cpu(f"configs/{name}_geneval.yaml", pretrained, tmp_path, name)
    assert cfg.learner.kl_coef == 1e-4 and cfg.schedule.max_inflight == 2  # the preset's own settings are in play
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "update"]
    assert [r["step"] for r in updates] == [1, 2]
    assert next(r for r in records if r["kind"] == "final")["failed_groups"] == 0
    checkpoint = tmp_path / name / "checkpoints" / "step_00002" / "theta"
    pipe = stock(name, pretrained, checkpoint)  # the run's θ loads into the stock pipeline
    assert any("lora" in key for key in pipe.transformer.state_dict())
