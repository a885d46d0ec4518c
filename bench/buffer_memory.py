"""Buffer memory: bytes held per sample when NFT keeps the clean x0 only, against keeping the whole sampling
trajectory (T+1 latents, as trajectory-based methods such as FlowGRPO must). Pickled sizes of real Groups from
the Sampler (tiny policy); the same figures for SD3.5-Medium at 512² computed from the shapes.
"""

from __future__ import annotations

import dataclasses
import pickle

import torch

from actors.prompts import PromptSource, read_prompts
from actors.sampler import Sampler
from bench.context import BenchContext
from bench.paired import target


def pickled_bytes(value: object) -> int:
    return len(pickle.dumps(value, protocol=5))


def sample_with_trajectory(sampler: Sampler, groups: list) -> tuple[list, torch.Tensor]:
    """Real Groups from `Sampler.sample`, plus the solver's states: the policy's velocity is wrapped on this one
    instance to record the x it is called at (one call per step), and x0 closes the trajectory."""
    states: list[torch.Tensor] = []
    velocity = sampler.policy.velocity

    def recording(xt, t, embeds, pooled):
        states.append(xt.detach().cpu().clone())
        return velocity(xt, t, embeds, pooled)

    sampler.policy.velocity = recording
    try:
        sampled = sampler.sample(groups)
    finally:
        del sampler.policy.velocity  # back to the class's method
    x0 = torch.cat([g.x0 for g in sampled])  # (G·K, C, h, w)
    return sampled, torch.stack([*states, x0], dim=1)  # (G·K, T+1, C, h, w)


def sd3_medium_analytic(num_steps: int = 10, group_size: int = 24) -> dict[str, float]:
    """Per-sample bytes at 512² for SD3.5-M as our Sampler stores them: x0 float32 (16, 64, 64); prompt embeds
    float32 once per group (77 CLIP + 128 T5 tokens × 4096, pooled 2048); images uint8 (512, 512, 3)."""
    latent = 16 * 64 * 64 * 4
    embeds = ((77 + 128) * 4096 + 2048) * 4 / group_size
    image = 512 * 512 * 3
    return {"x0_bytes": latent, "trajectory_bytes": (num_steps + 1) * latent, "embeds_bytes_per_sample": embeds,
            "image_bytes": image, "latent_ratio": 1 / (num_steps + 1),
            "nft_with_embeds_bytes": latent + embeds, "trajectory_with_embeds_bytes": (num_steps + 1) * latent + embeds,
            "nft_with_embeds_and_images_bytes": latent + embeds + image}


def measure(ctx: BenchContext) -> dict[str, dict]:
    cfg = ctx.config(*(["sampler.num_steps=4"] if ctx.quick else []))
    torch.manual_seed(0)
    sampler = Sampler(cfg.policy, cfg.sampler, device="cpu")
    prompts = PromptSource(read_prompts(cfg.prompts.train), group_size=cfg.prompts.group_size, seed=0)
    groups, trajectory = sample_with_trajectory(sampler, [prompts.next_group() for _ in range(1 if ctx.quick else 2)])
    k, steps = cfg.prompts.group_size, cfg.sampler.num_steps
    assert trajectory.shape[1] == steps + 1, trajectory.shape
    # A sample call's Groups are one object in the store (their x0 are views of one tensor): pickle them together.
    traj_groups = [dataclasses.replace(g, x0=trajectory[i * k:(i + 1) * k]) for i, g in enumerate(groups)]
    n = len(groups) * k
    per_sample = {
        "x0": pickled_bytes(torch.cat([g.x0 for g in groups])) / n,
        "trajectory": pickled_bytes(trajectory) / n,
        "group_as_sampled": pickled_bytes(groups) / n,  # the Sampler's output, images included, until scored
        "group_without_images": pickled_bytes([dataclasses.replace(g, images=None) for g in groups]) / n,
        "training_group": pickled_bytes([g.for_learner() for g in groups]) / n,  # what the buffer holds now
        "trajectory_group": pickled_bytes(traj_groups) / n,
        "trajectory_group_without_images": pickled_bytes([dataclasses.replace(g, images=None)
                                                          for g in traj_groups]) / n,
    }
    latent_ratio = per_sample["x0"] / per_sample["trajectory"]
    group_ratio = per_sample["group_as_sampled"] / per_sample["trajectory_group"]
    fetch_ratio = per_sample["training_group"] / per_sample["group_as_sampled"]
    sd3 = sd3_medium_analytic()  # the reference: 10 steps, K = 24
    rows = [
        ["x0 per sample (what NFT trains on)", f"{per_sample['x0']:,.0f} B"],
        [f"trajectory per sample ({steps + 1} latents)", f"{per_sample['trajectory']:,.0f} B"],
        ["x0 / trajectory", f"{latent_ratio:.3f} (1/(T+1) = {1 / (steps + 1):.3f})"],
        ["Group / trajectory Group, as sampled (images, embeds, seeds, metadata on both sides)", f"{group_ratio:.3f}"],
        ["held and fetched per rank: TrainingGroup (x0, conditioning) vs the whole scored Group fetched before",
         f"{per_sample['training_group']:,.0f} B vs {per_sample['group_as_sampled']:,.0f} B ({fetch_ratio:.2f}×)"],
        ["Group / trajectory Group, images dropped after scoring",
         f"{per_sample['group_without_images'] / per_sample['trajectory_group_without_images']:.3f}"],
        ["SD3.5-M 512² (analytic): x0 vs trajectory per sample",
         f"{sd3['x0_bytes'] / 2**10:,.0f} KiB vs {sd3['trajectory_bytes'] / 2**20:.2f} MiB"],
        ["SD3.5-M 512² (analytic): with prompt embeds (K=24), NFT vs trajectory",
         f"{sd3['nft_with_embeds_bytes'] / 2**10:,.0f} KiB vs {sd3['trajectory_with_embeds_bytes'] / 2**20:.2f} MiB"],
        ["SD3.5-M 512² (analytic): fetched per sample by a learner rank, before (images in the Group) vs now",
         f"{sd3['nft_with_embeds_and_images_bytes'] / 2**10:,.0f} KiB vs {sd3['nft_with_embeds_bytes'] / 2**10:,.0f} "
         f"KiB ({sd3['nft_with_embeds_bytes'] / sd3['nft_with_embeds_and_images_bytes']:.2f}×)"],
    ]
    return {"buffer": {
        "what": "pickled bytes per sample (protocol 5, as Ray stores them) of real Groups from Sampler.sample",
        "config": {"resolution": cfg.policy.resolution, "latent_shape": list(groups[0].x0.shape[1:]),
                   "num_steps": steps, "group_size": k, "solver": cfg.sampler.solver, "groups": len(groups)},
        "bytes_per_sample": per_sample,
        "figures": {"x0_over_trajectory": latent_ratio, "group_over_trajectory_group": group_ratio,
                    "training_group_over_group": fetch_ratio,
                    "ideal": 1 / (steps + 1)},
        "sd3_medium_512": sd3,
        "rows": rows,
        "targets": [target("buffer: x0 / trajectory bytes per sample (1/(T+1) ideal)", latent_ratio,
                           1.05 / (steps + 1), at_most=True)],
        "notes": [f"T+1 = {steps + 1} latents for {steps} steps: the noise, {steps - 1} intermediate states and x0 "
                  "(the issue's 1/T is 1/(T+1) when the noise is counted).",
                  "Each Group's x0 is a view of its sample call's tensor: Ray stores a call's Groups as one object, "
                  "so the storage is held once; a Group pickled on its own would carry the whole call's x0.",
                  "After scoring, the buffer holds and the learner ranks fetch TrainingGroups (x0, prompt "
                  "embeddings, timesteps); the images go to the reward side only and are released once scored, "
                  "apart from one preview image per group kept for the grids (at 512² an image is 3× an x0)."],
    }}
