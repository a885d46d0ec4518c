"""Prompt sources: GenEval-style .jsonl (prompt + metadata) or plain .txt (one prompt per line), served in groups.

The source hands out `PromptGroup`s: one prompt, its metadata, and a seed per sample, from a seeded shuffled
order; its position is part of a checkpoint so a resumed run sees the same prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_SEED_LIMIT = 2**30  # training noise seeds are drawn below this; evaluation seeds start here (never trained on)


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptGroup:
    """What a Sampler receives: K copies of one prompt, each with its own noise seed."""

    index: int  # position in the stream: orders groups deterministically
    prompt: str
    metadata: dict[str, Any]
    seeds: tuple[int, ...]


def read_prompts(path: str | Path) -> list[PromptRecord]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {str(path)!r} not found; prompt sets live in configs/prompts/")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path} is empty")
    if path.suffix == ".txt":
        return [PromptRecord(line.strip()) for line in lines]
    if path.suffix != ".jsonl":
        raise ValueError(f"prompt file {path}: use .jsonl (GenEval metadata) or .txt (one prompt per line)")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ValueError(f"{path}:{number}: each line needs a string field 'prompt'")
        records.append(PromptRecord(item["prompt"], {k: v for k, v in item.items() if k != "prompt"}))
    return records


class PromptSource:
    """Endless epochs over a prompt set, reshuffled each epoch from `seed`; resumable by `position`."""

    def __init__(self, records: list[PromptRecord], *, group_size: int, seed: int = 0):
        self.records, self.group_size, self.seed = records, group_size, seed
        self.position = 0

    def _record(self, index: int) -> PromptRecord:
        epoch, offset = divmod(index, len(self.records))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.records))
        return self.records[order[offset]]

    def next_group(self) -> PromptGroup:
        index = self.position
        record = self._record(index)
        seeds = np.random.default_rng([self.seed, index, 1]).integers(0, TRAIN_SEED_LIMIT, self.group_size)
        self.position += 1
        return PromptGroup(index, record.prompt, record.metadata, tuple(int(s) for s in seeds))

    def state(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed}

    def load_state(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint prompt seed {state['seed']} differs from prompts.seed {self.seed}")
        self.position = int(state["position"])
