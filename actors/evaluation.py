"""Evaluation: sample a prompt set with θ (or its EMA) on the sampler pool, score, aggregate with 95% intervals.

A run evaluates two sets (GenEval's protocol, and a generalisation check beside it):
- `in-distribution`: the training prompts, i.e. the meanings, templates and vocabulary RL trains on, sampled at
  evaluation seeds, which training never draws (training seeds lie below TRAIN_SEED_LIMIT, evaluation seeds at or
  above it). This is the headline, as in the paper's GenEval numbers.
- `held-out`: the test prompts, whose meanings neither pretraining nor RL ever shows.
Every mean carries the half-width of its 95% interval, over the images with the prompts held fixed (see
`interval95`). Shared by the training driver (start, every N updates, end) and `python -m deploy.evaluate`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.group import Group
from actors.prompts import TRAIN_SEED_LIMIT, PromptGroup, PromptRecord
from actors.sampler_pool import SamplerPool
from configs.schema import EvalConfig

IN_DISTRIBUTION, HELD_OUT = "in-distribution", "held-out"
MAX_IMAGES_PER_PROMPT = 1000  # evaluation seed of row i, image k: TRAIN_SEED_LIMIT + i·1000 + k


@dataclass
class EvalResult:
    name: str  # the evaluation set: in-distribution or held-out
    version: int
    means: dict[str, float]  # every score key the servers reported, averaged over images
    intervals: dict[str, float]  # key -> half-width of the 95% interval of its mean
    per_tag: dict[str, dict[str, float]]  # metadata tag -> key -> mean
    num_images: int  # images scored
    failed_groups: int
    images: np.ndarray  # (N, H, W, 3) uint8, the first image of each prompt, for grids
    captions: list[str]


def eval_groups(records: list[PromptRecord], *, images_per_prompt: int, num_prompts: int = 0) -> list[PromptGroup]:
    """The first `num_prompts` rows (0: all) as groups with fixed evaluation seeds, so every evaluation sees the
    same noise; the seeds lie at or above TRAIN_SEED_LIMIT, where training never draws."""
    if not 1 <= images_per_prompt <= MAX_IMAGES_PER_PROMPT:
        raise ValueError(f"images_per_prompt {images_per_prompt}: use 1 to {MAX_IMAGES_PER_PROMPT}")
    chosen = records[:num_prompts] if num_prompts else records
    return [PromptGroup(i, r.prompt, r.metadata,
                        tuple(TRAIN_SEED_LIMIT + i * MAX_IMAGES_PER_PROMPT + k for k in range(images_per_prompt)))
            for i, r in enumerate(chosen)]


def interval95(by_prompt: dict[str, list[float]]) -> float:
    """Half-width 1.96·SE of the mean over all images, the prompts held fixed (a stratified standard error):
    Var = Σ_p n_p·s_p² / n², with s_p² the sample variance of prompt p's images, or the pooled within-prompt
    variance where a prompt has a single image (the variance over all images when no prompt has two)."""
    values = [np.asarray(v, dtype=np.float64) for v in by_prompt.values() if len(v)]
    n = sum(len(v) for v in values)
    if n < 2:
        return float("nan")
    multi = [v for v in values if len(v) > 1]
    if multi:
        pooled = sum(((v - v.mean()) ** 2).sum() for v in multi) / sum(len(v) - 1 for v in multi)
    else:
        pooled = float(np.concatenate(values).var(ddof=1))
    variance = sum(len(v) * (v.var(ddof=1) if len(v) > 1 else pooled) for v in values) / n**2
    return float(1.96 * np.sqrt(variance))


def evaluate(pool: SamplerPool, scorer: ray.actor.ActorHandle, groups: list[PromptGroup],
             weights_ref: ray.ObjectRef | None, version: int, cfg: EvalConfig, *, name: str = HELD_OUT,
             per_call: int = 16) -> EvalResult:
    """Sample `groups` with the weights behind `weights_ref` (None: the base policy), score, average per tag.
    The groups of a Sampler that dies meanwhile count as failed."""
    sampled = pool.evaluate_async(groups, weights_ref, version, solver=cfg.solver, num_steps=cfg.num_steps,
                                  guidance_scale=cfg.guidance_scale, per_call=per_call)
    scored_refs = [scorer.score_groups.remote(ref) for ref in sampled]
    scored: list[Group] = []
    failed = 0
    for start, ref in zip(range(0, len(groups), per_call), scored_refs, strict=True):
        try:
            scored.extend(ray.get(ref))
        except (RayActorError, RayTaskError) as error:
            if isinstance(error, RayTaskError) and not isinstance(error.cause, RayActorError):
                raise  # a bug in sampling or scoring, not a lost actor
            failed += len(groups[start:start + per_call])
    values: dict[str, list[float]] = defaultdict(list)
    by_prompt: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tagged: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for group in scored:
        if group.failure is not None:
            failed += 1
            continue
        tag = str(group.metadata.get("tag", "all"))
        for key, scores in group.scores.items():
            values[key].extend(scores)
            by_prompt[key][group.prompt].extend(scores)
            tagged[tag][key].extend(scores)
    return EvalResult(
        name=name,
        version=version,
        means={k: float(np.mean(v)) for k, v in values.items()},
        intervals={k: interval95(by_prompt[k]) for k in values},
        per_tag={t: {k: float(np.mean(v)) for k, v in keys.items()} for t, keys in sorted(tagged.items())},
        num_images=len(next(iter(values.values()), [])),
        failed_groups=failed,
        images=np.stack([g.images[0] for g in scored]) if scored else np.zeros((0, 1, 1, 3), np.uint8),
        captions=[g.prompt if g.failure else f"{g.prompt} ({'/'.join(f'{v[0]:.2f}' for v in g.scores.values())})"
                  for g in scored])


def summary(before: EvalResult, after: EvalResult, key: str) -> str:
    """`<set> <key>: 0.452 ± 0.028 -> 0.781 ± 0.024` (95% intervals)."""
    return (f"{after.name} {key}: {before.means[key]:.3f} ± {before.intervals[key]:.3f} -> "
            f"{after.means[key]:.3f} ± {after.intervals[key]:.3f}")
