"""The pieces a run drives, built from the config: Ray, reward servers (Ray actors or external URLs, health-checked),
the GroupScorer, the LearnerGroup, the SamplerPool, prompts, Buffer and Collector, and the run directory."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
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
from deploy.reward_scaling import start_replica, start_scaler
from deploy.trackers import Trackers
from learner.buffer import Buffer
from learner.learner_group import LearnerGroup
from reward_service.client import RewardClient


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
        replicas = [start_replica(cfg, local) for _ in range(cfg.replicas)]
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
    replicas: list  # RewardReplica actors (none with external reward.urls)
    learner: LearnerGroup
    pool: SamplerPool
    prompts: PromptSource
    buffer: Buffer
    collector: Collector
    eval_sets: dict[str, list]  # set name -> prompt groups at evaluation seeds
    bar: tqdm
    reward_scaler: ray.actor.ActorHandle | None = None  # with reward.autoscale.enabled: owns the replicas it adds


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
    grpo = cfg.algorithm == "flow_grpo"  # what differs: what the samplers collect and the learner's loss
    bar = tqdm(total=cfg.run.num_updates, disable=not cfg.run.progress, dynamic_ncols=True,
               desc="Flow-GRPO" if grpo else "NFT")
    # The Samplers load the model while the reward servers and the learner ranks start: waited for last.
    if grpo and cfg.learner.old_policy.cap != 0:
        bar.write(f"algorithm flow_grpo samples on-policy: θ_old copies θ after every update, so "
                  f"learner.old_policy (NFT's schedule, cap {cfg.learner.old_policy.cap}) is not used")
    pool = SamplerPool(cfg.policy, cfg.sampler, max_inflight=cfg.schedule.max_inflight,
                       noise_level=cfg.flow_grpo.noise_level if grpo else None, log=bar.write, wait=False)
    started.append(pool.shutdown)
    urls, replicas = start_reward(cfg.reward, local=local)
    write_prometheus_targets(Path(cfg.run.output_dir) / "prometheus_targets" / f"{cfg.run.name}.json", urls,
                             own_ray=local)
    # On the driver's node (the head on a cluster), so losing a sampler or reward node does not take scoring with it.
    # Not soft: a soft affinity let Ray put it on a sampler node of a multi-node cluster (tests/test_multinode.py).
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    scorer = ray.remote(GroupScorer).options(num_cpus=0, max_concurrency=64, max_restarts=3,
                                             scheduling_strategy=driver_node).remote(cfg.reward, urls, replicas)
    started.append(lambda: [ray.kill(actor) for actor in (scorer, *replicas)])
    scaler = None
    if cfg.reward.autoscale.enabled:  # killed first on shutdown, and the replicas it started with it
        scaler = start_scaler(cfg.reward, cfg.run.name, scorer, replicas, local, scheduling_strategy=driver_node)
        started.append(lambda: ray.kill(scaler))
    learner = LearnerGroup(cfg.policy, cfg.learner, seed=cfg.run.seed,
                           max_policy_lag=0 if grpo else cfg.schedule.max_policy_lag,  # GRPO keeps no θ_old history
                           flow_grpo=cfg.flow_grpo if grpo else None, guidance_scale=cfg.sampler.guidance_scale,
                           total_updates=cfg.run.num_updates, log=bar.write)
    started.append(learner.shutdown)
    pool.wait_ready()
    prompts = PromptSource(read_prompts(cfg.prompts.train), group_size=cfg.prompts.group_size, seed=cfg.prompts.seed)
    buffer = Buffer(capacity=cfg.schedule.buffer_capacity, max_policy_lag=cfg.schedule.max_policy_lag,
                    adv_clip_max=cfg.learner.adv_clip_max, global_std=cfg.learner.global_std,
                    skip_uniform=cfg.schedule.skip_uniform_groups)
    collector = Collector(pool, scorer, prompts, buffer, cfg.schedule, cfg.sampler, log=bar.write)
    return Runtime(run, scorer, replicas, learner, pool, prompts, buffer, collector, eval_sets(cfg), bar, scaler)


def placement(rt: Runtime, timeout_s: float = 120.0, log=print) -> dict[str, list[str | None]]:
    """The Ray node id each role's actors run on now, the driver's included: on a cluster, which node group took
    each role. An actor being restarted answers from its new node once it is back; None for one not back within
    `timeout_s` (no node with its resources free) or out of restarts. Waits behind calls the actors are running."""
    roles = {"scorer": [rt.scorer], "reward": rt.replicas, "learner": rt.learner.ranks,
             "sampler": [a for i, a in enumerate(rt.pool.actors) if i not in rt.pool.dead]}
    refs = {role: [actor.__ray_call__.options(max_task_retries=-1).remote(_node_id) for actor in actors]
            for role, actors in roles.items()}
    every = [ref for role_refs in refs.values() for ref in role_refs]
    ready, pending = ray.wait(every, num_returns=len(every), timeout=min(10.0, timeout_s))
    if pending:
        log(f"placement: waiting up to {timeout_s:.0f}s for {len(pending)} actors (starting, restarting or busy)")
        ready += ray.wait(pending, num_returns=len(pending), timeout=timeout_s)[0]
    nodes = {role: [_answer(ref) if ref in ready else None for ref in role_refs] for role, role_refs in refs.items()}
    return {"driver": [ray.get_runtime_context().get_node_id()], **nodes}


def _answer(ref: ray.ObjectRef) -> str | None:
    try:
        return ray.get(ref)
    except RayActorError:  # out of restarts
        return None


def node_resources() -> dict[str, dict[str, float]]:
    """Each live node's custom resources by node id: the node group it belongs to, as the manifests name them."""
    builtin = ("CPU", "GPU", "memory", "object_store_memory")
    return {node["NodeID"]: {k: v for k, v in node["Resources"].items()
                             if k not in builtin and not k.startswith("node:")}
            for node in ray.nodes() if node["Alive"]}


def _node_id(_actor) -> str:
    return ray.get_runtime_context().get_node_id()


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
