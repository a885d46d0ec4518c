"""Experiment trackers: every record of metrics.jsonl and every grid also goes to TensorBoard and/or Weights & Biases.

`run.trackers: [tensorboard, wandb]` (default: none beyond the run directory). Names are stable:
`train/<key>` (loss terms, reward, grad norm, θ_old decay, policy lag), `reward/<scorer>` (the batch's mean score per
scorer), `eval/<set>/<key>` (+ `_interval95`, and `eval/<set>/<tag>/<key>` per GenEval tag), `system/<key>`
(phase seconds, throughput, buffer and fault counts). The resolved config is the run's config; grids are logged as
images. wandb runs offline where there is no network (`WANDB_MODE=offline`, the usual case on clusters; sync later
with `wandb sync`); its run id is kept in each checkpoint, so a resumed run continues the same wandb run.
TensorBoard writes to `<run dir>/tensorboard/`, wandb to `<run dir>/wandb/`. Each library is imported only when
its tracker is chosen.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_KEYS = ("reward", "loss", "policy_loss", "positive_loss", "negative_loss", "kl", "old_deviation", "grad_norm",
              "old_decay", "policy_lag", "ratio", "approx_kl", "clip_fraction", "lagged_samples", "optimizer_step")
NOT_SCALARS = ("kind", "step", "version", "set")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as tracker scalars under stable names; {} for records without any."""
    kind, out = record["kind"], {}
    if kind == "update":
        for key, value in record.items():
            if key in NOT_SCALARS or not (_number(value) or key == "train_scores"):
                continue
            if key == "train_scores":
                out.update({f"reward/{scorer}": float(v) for scorer, v in value.items() if _number(v)})
            else:
                out[f"{'train' if key in TRAIN_KEYS else 'system'}/{key}"] = float(value)
    elif kind == "eval":
        name = record["set"]
        out.update({f"eval/{name}/{key}": float(v) for key, v in record["means"].items() if _number(v)})
        out.update({f"eval/{name}/{key}_interval95": float(v) for key, v in record.get("intervals", {}).items()
                    if _number(v)})
        for tag, means in record.get("per_tag", {}).items():
            out.update({f"eval/{name}/{tag}/{key}": float(v) for key, v in means.items() if _number(v)})
    elif kind == "broadcast" and _number(record.get("applied_after_s")):
        out["system/broadcast_applied_after_s"] = float(record["applied_after_s"])
    return out


class TensorBoard:
    name = "tensorboard"

    def __init__(self, root: Path, run_name: str, config: dict[str, Any], config_yaml: str, run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))
        self.writer.add_text("config", "```yaml\n" + config_yaml + "\n```")
        self.run_id = None

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class Wandb:
    name = "wandb"

    def __init__(self, root: Path, run_name: str, config: dict[str, Any], config_yaml: str, run_id: str | None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "diffusion-nft"), name=run_name,
                              id=run_id or uuid.uuid4().hex[:8], resume="allow", dir=str(root), config=config)
        self.run_id = self.run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.run.log({f"grids/{name}": self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": Wandb}


class Trackers:
    """The chosen trackers as one: `log(record)`, `image(name, image, step)`, `ids()` for the checkpoint."""

    def __init__(self, names: list[str], root: Path, run_name: str, config: dict[str, Any], config_yaml: str,
                 ids: dict[str, str] | None = None):
        unknown = sorted(set(names) - set(TRACKERS))
        if unknown:
            raise ValueError(f"run.trackers {unknown}: choose from {sorted(TRACKERS)}")
        ids = ids or {}
        self.trackers = []
        try:
            for name in names:
                self.trackers.append(TRACKERS[name](root, run_name, config, config_yaml, ids.get(name)))
        except ImportError as error:
            raise ImportError(f"run.trackers needs {error.name!r}: pip install tensorboard wandb "
                              "(or the project's [trackers] extra)") from error

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            for tracker in self.trackers:
                tracker.log(record["step"], values)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        for tracker in self.trackers:
            tracker.image(name, image, step)

    def ids(self) -> dict[str, str]:
        return {t.name: t.run_id for t in self.trackers if t.run_id is not None}

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
