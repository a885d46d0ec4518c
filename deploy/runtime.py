"""The pieces a run drives, built from the config: Ray, reward servers (Ray actors or external URLs, health-checked),
the GroupScorer, the LearnerGroup, the SamplerPool, prompts, Buffer and Collector, and the run directory."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import ray
from tqdm import tqdm

from actors.evaluation import HELD_OUT, IN_DISTRIBUTION, eval_groups
from actors.prompts import PromptGroup, PromptSource, read_prompts
from actors.sampler_pool import SamplerPool
from actors.scoring import GroupScorer
from configs.load import dump_config
from configs.schema import Config, RewardConfig
from deploy.collector import Collector
from deploy.metrics import write_prometheus_targets
from deploy.report import RunDirectory
from deploy.trackers import Trackers
from learner.buffer import Buffer
from learner.learner_group import LearnerGroup
from reward_service.client import RewardClient
from reward_service.replica import RewardReplica


def start_ray(metrics_port: int | None = None) -> None:
    if os.environ.get("RAY_ADDRESS"):  # an existing cluster (ray job submit sets this); it chose its metrics port
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:  # Prometheus scrapes Ray's metrics agent (every actor's and the driver's metrics) on metrics_port
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 _metrics_export_port=metrics_port)


def start_reward(cfg: RewardConfig, local: bool) -> tuple[list[str], list]:
    """External servers from `reward.urls`, or `reward.replicas` servers started as Ray actors; health-checked."""
    replicas = []
    if cfg.replicas:
        remote = ray.remote(RewardReplica).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                                   resources=dict(cfg.resources), max_restarts=3)
        host = "127.0.0.1" if local else "0.0.0.0"
        replicas = [remote.remote(list(cfg.weights), cfg.scorer_args, api_key=cfg.api_key, host=host)
                    for _ in range(cfg.replicas)]
        urls = ray.get([r.url.remote() for r in replicas], timeout=600)
    else:
        urls = list(cfg.urls)
    asyncio.run(RewardClient.from_config(cfg, urls).check_health())
    return urls, replicas


@dataclass
class Runtime:
    """Everything the loop drives, built once from the config."""

    run: RunDirectory
    scorer: ray.actor.ActorHandle
    learner: LearnerGroup
    pool: SamplerPool
    prompts: PromptSource
    buffer: Buffer
    collector: Collector
    eval_sets: dict[str, list]  # set name -> prompt groups at evaluation seeds
    bar: tqdm


def build(cfg: Config, started: list, resume: Path | None = None) -> Runtime:
    """Reward servers, GroupScorer, LearnerGroup, SamplerPool, prompts, Buffer, trackers; `started` collects
    shutdowns. A run resumed from `resume` continues its trackers' runs (their ids are in the checkpoint)."""
    run = RunDirectory(Path(cfg.run.output_dir) / cfg.run.name, dump_config(cfg))
    if cfg.run.trackers:
        ids = json.loads((resume / "state.json").read_text()).get("trackers", {}) if resume else {}
        run.trackers = Trackers(list(cfg.run.trackers), run.root, cfg.run.name, cfg.model_dump(mode="json"),
                                dump_config(cfg), ids)
        started.append(run.trackers.close)
    local = not os.environ.get("RAY_ADDRESS")
    urls, replicas = start_reward(cfg.reward, local=local)
    write_prometheus_targets(Path(cfg.run.output_dir) / "prometheus_targets" / f"{cfg.run.name}.json", urls,
                             own_ray=local)
    scorer = ray.remote(GroupScorer).options(num_cpus=0, max_concurrency=64, max_restarts=3).remote(
        cfg.reward, urls, replicas)
    started.append(lambda: [ray.kill(actor) for actor in (scorer, *replicas)])
    grpo = cfg.algorithm == "flow_grpo"  # what differs: what the samplers collect and the learner's loss
    learner = LearnerGroup(cfg.policy, cfg.learner, seed=cfg.run.seed,
                           max_policy_lag=0 if grpo else cfg.schedule.max_policy_lag,  # GRPO keeps no θ_old history
                           flow_grpo=cfg.flow_grpo if grpo else None, guidance_scale=cfg.sampler.guidance_scale,
                           total_updates=cfg.run.num_updates)
    started.append(learner.shutdown)
    pool = SamplerPool(cfg.policy, cfg.sampler, max_inflight=cfg.schedule.max_inflight,
                       noise_level=cfg.flow_grpo.noise_level if grpo else None)
    started.append(pool.shutdown)
    prompts = PromptSource(read_prompts(cfg.prompts.train), group_size=cfg.prompts.group_size, seed=cfg.prompts.seed)
    buffer = Buffer(capacity=cfg.schedule.buffer_capacity, max_policy_lag=cfg.schedule.max_policy_lag,
                    adv_clip_max=cfg.learner.adv_clip_max, global_std=cfg.learner.global_std)
    bar = tqdm(total=cfg.run.num_updates, disable=not cfg.run.progress, dynamic_ncols=True,
               desc="Flow-GRPO" if grpo else "NFT")
    collector = Collector(pool, scorer, prompts, buffer, cfg.schedule, cfg.sampler, log=bar.write)
    return Runtime(run, scorer, learner, pool, prompts, buffer, collector, eval_sets(cfg), bar)


def eval_sets(cfg: Config) -> dict[str, list[PromptGroup]]:
    """The evaluation sets of a run: in-distribution (training prompts at evaluation seeds) and held-out."""
    sets = {}
    if cfg.eval.in_distribution_images_per_prompt:
        sets[IN_DISTRIBUTION] = eval_groups(read_prompts(cfg.prompts.train), num_prompts=cfg.eval.num_prompts,
                                            images_per_prompt=cfg.eval.in_distribution_images_per_prompt)
    if cfg.prompts.test:
        sets[HELD_OUT] = eval_groups(read_prompts(cfg.prompts.test), num_prompts=cfg.eval.num_prompts,
                                     images_per_prompt=cfg.eval.images_per_prompt)
    return sets
