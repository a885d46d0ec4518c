"""Overlap: end-to-end images trained per second of the overlapped schedule (max_policy_lag 1, max_inflight 2) against
the synchronous one (lag 0, one call in flight; configs/tiny_cpu.yaml's default), from the two `deploy.train.train`
runs of bench.schedules; pipeline efficiency = that throughput over the slowest stage's throughput when it runs
alone (measured here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import ray

from actors.prompts import PromptSource, read_prompts
from actors.sampler_pool import SamplerPool
from actors.scoring import GroupScorer
from bench.context import BenchContext, ray_session
from bench.paired import Spread, target
from bench.report import spread_text
from configs.schema import Config
from deploy.runtime import start_reward
from learner.buffer import Buffer
from learner.learner_group import LearnerGroup

# Overlapped, each stage gets its own core as on a cluster (samplers on core 0, the learner on core 1, one thread
# each); on a single core both share it.
PINNED = ["sampler.cpu_affinity=[0]", "learner.cpu_affinity=[1]"] if (os.cpu_count() or 1) >= 2 else []
OVERLAPPED = ["schedule.max_policy_lag=1", "schedule.max_inflight=2", "learner.num_threads=1", *PINNED]
SYNCHRONOUS = ["schedule.max_policy_lag=0", "schedule.max_inflight=1"]


def read_records(cfg: Config) -> list[dict]:
    path = Path(cfg.run.output_dir) / cfg.run.name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def images_per_update(cfg: Config) -> int:
    return cfg.schedule.groups_per_update * cfg.prompts.group_size


def steady_throughput(cfg: Config, records: list[dict]) -> list[float]:
    """Images trained per second of each update, from the wall-clock between consecutive update records. Left out:
    update 1 (it fills the pipeline), and the two updates after each evaluation: the one whose interval holds the
    evaluation, and the next, which overlapped sampling may have prepared while the evaluation ran."""
    per, kept, last, skip = images_per_update(cfg), [], None, 1
    for r in records:
        if r["kind"] == "eval" and last is not None:
            skip = 2
        if r["kind"] != "update":
            continue
        if last is not None and skip == 0:
            kept.append(per / (r["elapsed_s"] - last["elapsed_s"]))
        skip, last = max(skip - 1, 0), r
    if not kept:
        raise ValueError("no update interval free of evaluation: raise run.num_updates or eval.every")
    return kept


def sampler_alone(pool: SamplerPool, prompts: PromptSource, calls: int, per_call: int) -> tuple[float, list]:
    """Every Sampler busy with queued calls, nothing else running: images/s and the refs of the sampled groups."""
    ray.get([a.sample.remote([prompts.next_group()]) for a in pool.actors])  # warm-up
    start = time.perf_counter()
    refs = [pool.actors[i % len(pool.actors)].sample.remote([prompts.next_group() for _ in range(per_call)])
            for i in range(calls)]
    groups = ray.get(refs)
    return sum(g.size for call in groups for g in call) / (time.perf_counter() - start), refs


def reward_alone(scorer, refs: list) -> tuple[float, list]:
    """The sampled calls scored all at once through the GroupScorer and the reward replica(s)."""
    start = time.perf_counter()
    scored = [scorer.score.options(num_returns=3).remote(ref) for ref in refs]
    summaries = ray.get([s for s, *_ in scored])
    images = sum(s.size for call in summaries for s in call)
    seconds = time.perf_counter() - start
    return images / seconds, [(call, training) for call, (_, training, _) in zip(summaries, scored, strict=True)]


def learner_alone(learner: LearnerGroup, cfg: Config, scored: list, updates: int) -> float:
    """`update_async` on a real batch of scored groups, repeated; images per update over the median update time."""
    buffer = Buffer(capacity=cfg.schedule.buffer_capacity, max_policy_lag=1, adv_clip_max=cfg.learner.adv_clip_max,
                    global_std=cfg.learner.global_std)
    for summaries, ref in scored:
        for slot, summary in enumerate(summaries):
            buffer.add(summary, ref, slot)
    batch = buffer.pop_batch(cfg.schedule.groups_per_update, learner_version=0)
    assert batch is not None, "the sampler stage produced fewer groups than one update needs"
    seconds = []
    for version in range(updates + 1):  # the first is a warm-up
        # the same samples each time, stamped with the learner's current version: the learner computes v_old with
        # the θ_old that drew a sample and refuses one older than max_policy_lag; the cost does not depend on it
        current = dataclasses.replace(batch, policy_versions=(version,) * len(batch.policy_versions))
        start = time.perf_counter()
        ray.get(learner.update_async(current))
        if version:
            seconds.append(time.perf_counter() - start)
    return images_per_update(cfg) / Spread.of(seconds).median


def stages_alone(ctx: BenchContext) -> dict[str, float]:
    """Each stage of the overlapped config (one learner thread) run alone on the same actors and resources; images/s."""
    cfg = ctx.run_config("stages", *OVERLAPPED)
    per_call = cfg.sampler.groups_per_call
    calls = -(-cfg.schedule.groups_per_update // per_call) * (1 if ctx.quick else 2)  # two updates' worth
    with ray_session():
        urls, replicas = start_reward(cfg.reward, local=True)
        scorer = ray.remote(GroupScorer).options(num_cpus=0, max_concurrency=64).remote(cfg.reward, urls, replicas)
        learner = LearnerGroup(cfg.policy, cfg.learner, seed=cfg.run.seed,
                               max_policy_lag=cfg.schedule.max_policy_lag)
        pool = SamplerPool(cfg.policy, cfg.sampler, max_inflight=cfg.schedule.max_inflight)
        weights, checksum = learner.publish_async("old")
        ray.get(pool.broadcast_weights(weights, 0, checksum))
        prompts = PromptSource(read_prompts(cfg.prompts.train), group_size=cfg.prompts.group_size, seed=1)
        sampler, refs = sampler_alone(pool, prompts, calls, per_call)
        reward, scored = reward_alone(scorer, refs)
        learn = learner_alone(learner, cfg, scored, 1 if ctx.quick else 4)
    return {"sampler": sampler, "reward": reward, "learner": learn}


def section(cfg: Config, records: dict[str, list[dict]], alone: dict[str, float]) -> dict:
    """The overlap figures from the two schedules' run records and the stages' throughputs alone."""
    per_update = {side: steady_throughput(cfg, recs) for side, recs in records.items()}
    updates = {side: [r for r in recs if r["kind"] == "update"][1:] for side, recs in records.items()}
    tput = {side: Spread.of(v) for side, v in per_update.items()}
    slowest = min(alone, key=alone.get)
    speedup = tput["overlapped"].median / tput["synchronous"].median
    efficiency = {side: s.median / alone[slowest] for side, s in tput.items()}
    # What overlap can buy at best: the synchronous cycle with the shorter of collect and update hidden behind the
    # longer one, (t_sample + t_score + t_train) / (max(t_sample + t_score, t_train) + t_sync).
    ideal = Spread.of([(u["collect_s"] + u["update_s"] + u["broadcast_s"])
                       / (max(u["collect_s"], u["update_s"]) + u["broadcast_s"]) for u in updates["synchronous"]])
    # How much slower the learner runs overlapped than alone (it shares the cores with sampling).
    alone_update_s = images_per_update(cfg) / alone["learner"]
    slowdown = {side: Spread.of([u["update_s"] / alone_update_s for u in ups]) for side, ups in updates.items()}
    last = updates["overlapped"][-1]
    stale_share = last["stale_groups"] / max(last["added_groups"], 1)  # sampled, then dropped for their age
    rows = [["overlapped / synchronous, images trained per second (ratio of medians)", f"{speedup:.2f}×"],
            *[[f"pipeline efficiency, {side} (throughput / slowest stage alone)", f"{e:.2f}"]
              for side, e in efficiency.items()],
            ["bound: best speedup overlap could give (synchronous cycle / its longer phase + broadcast)",
             spread_text(ideal, "×")],
            ["overlapped / synchronous over the bound", f"{speedup / ideal.median:.2f}"],
            *[[f"learner update phase, {side} / alone", spread_text(s, "×")] for side, s in slowdown.items()],
            ["overlapped: groups dropped as stale / groups sampled", f"{stale_share:.2f}"],
            *[[f"{side}: images trained/s per update (context)", spread_text(s, "", digits=2)]
              for side, s in tput.items()],
            *[[f"{stage} alone: images/s (context){' ← slowest' if stage == slowest else ''}", f"{v:.2f}"]
              for stage, v in alone.items()]]
    return {
        "what": ("The two learning-speed runs (configs/tiny_cpu.yaml, seed 0; overlapped first, synchronous last, "
                 "the stages alone in between): images trained per second of each update from the wall-clock "
                 "between update records, leaving out update 1 and the two updates after each evaluation. Stages "
                 "alone: the same actors and Ray resources, each stage with nothing else running."),
        "config": {"overlapped": "max_policy_lag 1, max_inflight 2", "synchronous": "max_policy_lag 0, max_inflight 1",
                   "images_per_update": images_per_update(cfg)},
        "per_update_images_per_s": {side: s.as_dict() for side, s in tput.items()},
        "stages_alone_images_per_s": alone, "slowest_stage": slowest,
        "updates": {side: [{k: u.get(k) for k in ("step", "elapsed_s", "collect_s", "update_s", "broadcast_s",
                                                  "policy_lag", "stale_groups", "added_groups")} for u in ups]
                    for side, ups in updates.items()},
        "figures": {"speedup": speedup, "efficiency": efficiency, "ideal_speedup": ideal.as_dict(),
                    "stale_share_overlapped": stale_share,
                    "learner_slowdown": {side: s.as_dict() for side, s in slowdown.items()}},
        "rows": rows,
        "targets": [target("pipeline efficiency, overlapped", efficiency["overlapped"], 0.9, at_most=False, unit=""),
                    target("overlapped / synchronous over the bound", speedup / ideal.median, 0.9, at_most=False,
                           unit=""),
                    target("overlapped: stale share", stale_share, 0.05, at_most=True, unit="")],
        "notes": [f"The slowest stage alone is the {slowest}. Overlap hides the synchronous schedule's collect phase "
                  f"behind the update; with these stage costs that is worth at most {ideal.median:.2f}×.",
                  f"Overlapped, the update phase takes {slowdown['overlapped'].median:.2f}× its time alone "
                  f"(synchronous: {slowdown['synchronous'].median:.2f}×): on {os.cpu_count()} cores the samplers, the "
                  "reward replica and the learner share the CPUs, which a node with a device per stage would not.",
                  f"The synchronous run's learner takes learner.num_threads = {cfg.learner.num_threads} threads (the "
                  "samplers idle during its update); the overlapped run and the stages alone take 1, so the "
                  "synchronous update phase can beat the learner alone and its efficiency can pass what one thread "
                  "allows.",
                  f"Overlapped, {stale_share:.0%} of the sampled groups aged past max_policy_lag and were dropped: "
                  "admission counts the batch in training against (1 + max_policy_lag) updates' worth of groups, "
                  "so only a restarted Sampler's groups can go stale.",
                  f"Overlapped, the stages are pinned ({', '.join(PINNED) or 'one core: not pinned'}); the "
                  "synchronous run is not, and its phases each use both cores.",
                  f"The stage alone samples {alone['sampler'] / alone['learner']:.1f}× faster than the learner trains "
                  f"with {cfg.sampler.num_actors} Sampler actors; where that is > 2, fewer sampler processes than "
                  "cores' worth (bench --set sampler.num_actors=1) leave the learner a core of its own."],
    }
