"""What a person sees of a run: the run directory with the resolved config, a JSONL metrics log, sample grids
with prompts and rewards, and a reward-curve PNG (train reward and each evaluation set's score vs step and
wall-clock).
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def save_grid(path: str | Path, images: np.ndarray, captions: list[str], *, columns: int = 8, cell: int = 128) -> Path:
    """Images (N, H, W, 3) uint8 upscaled to `cell` pixels, each with its caption underneath."""
    font = ImageFont.load_default(size=11)
    text_height = 44
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * cell, rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        sheet.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width=cell // 6)[:3]
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines), fill="black", font=font, spacing=1)
    path = Path(path)
    sheet.save(path)
    return path


def save_curves(path: str | Path, records: list[dict[str, Any]], *, train_key: str, test_key: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "update"]
    sets: dict[str, list[dict[str, Any]]] = {}  # evaluation set -> its evaluations
    for r in records:
        if r.get("kind") == "eval" and test_key in r.get("means", {}):
            sets.setdefault(r.get("set", "held-out"), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x_key, label in [(axes[0], "step", "update"), (axes[1], "elapsed_s", "wall-clock (s)")]:
        if train:
            ax.plot([r[x_key] for r in train], [r[train_key] for r in train], ".-", alpha=0.6,
                    label=f"train reward ({train_key})")
        for name, test in sets.items():
            ax.errorbar([r[x_key] for r in test], [r["means"][test_key] for r in test],
                        yerr=[r.get("intervals", {}).get(test_key, 0.0) for r in test], fmt="o-", lw=2,
                        capsize=3, label=f"{name} {test_key} (95% interval)")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.7)
    axes[0].set_ylabel("score")
    fig.suptitle("DiffusionNFT: reward during training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


class RunDirectory:
    """runs/<name>/: config.yaml, metrics.jsonl, grids/, curves.png, checkpoints/; every record and grid also goes to
    the run's experiment trackers, when it has some (deploy/trackers.py)."""

    def __init__(self, root: str | Path, config_yaml: str):
        self.root = Path(root)
        self.trackers = None  # deploy.trackers.Trackers, attached by the runtime when run.trackers names any
        (self.root / "grids").mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(config_yaml)
        self.metrics_path = self.root / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.metrics_path.is_file():  # a resumed run keeps its history
            self.records = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]
        self.start = time.time() - (self.records[-1]["elapsed_s"] if self.records else 0.0)

    def log(self, kind: str, step: int, **values: Any) -> dict[str, Any]:
        record = {"kind": kind, "step": step, "elapsed_s": round(time.time() - self.start, 3), **values}
        self.records.append(record)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)
        return record

    def truncate(self, step: int) -> None:
        """Forget the records after `step`: a run resumed from the checkpoint at `step` does those updates again."""
        self.records = [r for r in self.records if r["step"] <= step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self.start = time.time() - (self.records[-1]["elapsed_s"] if self.records else 0.0)

    def grid(self, name: str, images: np.ndarray, captions: list[str]) -> Path:
        """grids/<name>.png; a name ending in _NNNNN is logged to the trackers under the rest, at step NNNNN."""
        path = save_grid(self.root / "grids" / f"{name}.png", images, captions)
        if self.trackers is not None:
            base, _, step = name.rpartition("_")
            at = int(step) if step.isdigit() else (self.records[-1]["step"] if self.records else 0)
            self.trackers.image(base if step.isdigit() else name, np.asarray(Image.open(path).convert("RGB")), at)
        return path

    def tracker_ids(self) -> dict[str, str]:
        return self.trackers.ids() if self.trackers is not None else {}

    def curves(self, *, train_key: str, test_key: str) -> Path:
        return save_curves(self.root / "curves.png", self.records, train_key=train_key, test_key=test_key)
