"""The `LearnerGroup`: N Learner ranks as Ray actors in one placement group, joined by torch.distributed.

Rank 0 reports `master_addr:port` first, then every rank joins. `update_async` hands each rank the same batch
(each trains on its own shard); `publish_async` returns rank 0's θ_old as an ObjectRef of numpy arrays, stored
once, and its checksum.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from configs.schema import FlowGrpoConfig, LearnerConfig, PolicyConfig
from learner.buffer import Batch
from learner.learner import Learner


def bundles(num_ranks: int, num_cpus: float, num_gpus: float,
            resources: dict[str, float] | None = None) -> list[dict[str, float]]:
    """One bundle per rank with its CPUs, GPUs and custom resources (zero amounts left out, as Ray expects)."""
    bundle = {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}
    return [{k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.001} for _ in range(num_ranks)]


class LearnerGroup:
    def __init__(self, policy_cfg: PolicyConfig, learner_cfg: LearnerConfig, *, seed: int, max_policy_lag: int = 0,
                 flow_grpo: FlowGrpoConfig | None = None, guidance_scale: float = 1.0,
                 total_updates: int = 0, placement_timeout_s: float = 120.0):
        self.cfg = learner_cfg
        self.placement = placement_group(bundles(learner_cfg.num_ranks, learner_cfg.num_cpus, learner_cfg.num_gpus,
                                                 learner_cfg.resources), strategy="PACK")
        ready, _ = ray.wait([self.placement.ready()], timeout=placement_timeout_s)
        if not ready:
            remove_placement_group(self.placement)
            raise RuntimeError(
                f"the learner group cannot be placed within {placement_timeout_s:.0f}s: it needs "
                f"{learner_cfg.num_ranks} × {{CPU: {learner_cfg.num_cpus}, GPU: {learner_cfg.num_gpus}}} plus "
                f"{learner_cfg.resources or 'no custom resources'}, the "
                f"cluster has {ray.available_resources()} free; lower learner.num_ranks/num_cpus/num_gpus or add nodes")
        remote = ray.remote(Learner)
        self.ranks = [
            remote.options(num_cpus=learner_cfg.num_cpus, num_gpus=learner_cfg.num_gpus,
                           resources=dict(learner_cfg.resources),
                           scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, i)).remote(
                policy_cfg, learner_cfg, rank=i, world_size=learner_cfg.num_ranks, seed=seed,
                max_policy_lag=max_policy_lag, flow_grpo=flow_grpo, guidance_scale=guidance_scale,
                total_updates=total_updates)
            for i in range(learner_cfg.num_ranks)]
        master_addr, master_port = ray.get(self.ranks[0].address.remote())
        ray.get([rank.setup.remote(master_addr, master_port) for rank in self.ranks])

    def update_async(self, batch: Batch) -> list[ray.ObjectRef]:
        """One update on every rank; rank 0's metrics come first."""
        return [rank.update.remote(batch) for rank in self.ranks]

    def publish_async(self, which: str = "old") -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Rank 0's θ_old ('old'), θ ('theta') or EMA ('ema') as numpy arrays, and their checksum: two refs."""
        weights, checksum = self.ranks[0].publish.options(num_returns=2).remote(which)
        return weights, checksum

    def weights_async(self, which: str = "old") -> ray.ObjectRef:
        return self.publish_async(which)[0]

    def checksums(self) -> list[float]:
        """Every rank's weight checksum: all equal while DDP keeps the ranks in step."""
        return ray.get([rank.checksum.remote() for rank in self.ranks])

    def state(self) -> list[dict]:
        """Every rank's checkpoint state; rank 0's also holds θ, θ_old, the EMA and the optimizer."""
        return ray.get([rank.state.remote(with_weights=i == 0) for i, rank in enumerate(self.ranks)])

    def load_state(self, states: list[dict], version: int) -> None:
        """Every rank takes rank 0's weights and optimizer and its own RNG states (a new rank keeps fresh ones);
        θ_old resumes as policy `version`."""
        shared = ray.put(states[0])
        ray.get([rank.load_state.remote(shared, states[i]["rng"] if i < len(states) else None, version)
                 for i, rank in enumerate(self.ranks)])

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement)
