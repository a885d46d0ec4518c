"""What every measurement receives (`BenchContext`: policy, size, scratch space, budgets) and the Ray session it
runs in. Each measurement starts its own local Ray so one measurement's actors never load the next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

from configs.load import load_config
from configs.schema import Config

COMMITTED_POLICY = Path("configs/policies/tiny_shapes")
CONFIG = Path("configs/tiny_cpu.yaml")


@dataclass(frozen=True)
class BenchContext:
    quick: bool  # smoke size: every loop short, figures meaningless, schema identical
    policy_dir: str  # the tiny policy every measurement loads
    policy_note: str  # where it came from (committed pretrained, or random weights as a stand-in)
    scratch: Path  # run directories and temporary policies; not kept
    out: Path  # where results and figures are written
    learning_updates: int  # updates per training run of bench.schedules (overlap and learning speed)
    learning_eval_every: int  # held-out evaluation every this many updates
    config_overrides: tuple[str, ...] = ()  # --set: applied to configs/tiny_cpu.yaml by every measurement

    def config(self, *more: str) -> Config:
        """configs/tiny_cpu.yaml with this bench's policy, then the --set overrides, then `more`."""
        return load_config(CONFIG, [f"policy.pretrained={self.policy_dir}", *self.config_overrides, *more])

    def run_config(self, run_name: str, *more: str) -> Config:
        """As `config`, for a training run: its own run directory, no grids, no progress bar; smaller when quick."""
        quick = ["schedule.groups_per_update=2", "learner.micro_batch_size=8", "sampler.num_steps=4",
                 "eval.num_prompts=8", "eval.num_steps=4"] if self.quick else []
        return self.config(f"run.output_dir={self.scratch / 'runs'}", f"run.name={run_name}", "run.grid_every=0",
                           "run.progress=false", *quick, *more)


@contextmanager
def ray_session() -> Iterator[None]:
    """A fresh local Ray with as many logical CPUs as the machine has (as `deploy.runtime.start_ray` does)."""
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
