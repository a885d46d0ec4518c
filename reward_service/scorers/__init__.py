"""Scorers: one file each, one signature. A scorer turns images + prompts + metadata into scores.

`score` returns a dict of per-image lists. The key equal to the scorer's `name` is its training score; other
keys (e.g. `shapes_strict`) are reported only. `None` marks an image the scorer failed on: the sample's group
is dropped and counted upstream, never given a default reward.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

Scores = dict[str, list[float | None]]

# name -> module under reward_service.scorers exposing `build(**options) -> Scorer`; heavy imports stay inside.
SCORER_MODULES = {
    "shapes": "shapes",
    "shapes_strict": "shapes_strict",
    "jpeg_compressibility": "jpeg",
    "ocr": "ocr",
    "pickscore": "pickscore",
    "clipscore": "clipscore",
    "hpsv2": "hpsv2",
    "aesthetic": "aesthetic",
    "imagereward": "imagereward",
    "geneval": "geneval",
    "unifiedreward": "unifiedreward",
}


class Scorer(Protocol):
    name: str

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        """images: (N, H, W, 3) uint8. Returns {name: [score per image], other reported keys: [...]}."""
        ...


def build_scorer(name: str, **options: Any) -> Scorer:
    if name not in SCORER_MODULES:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORER_MODULES))}")
    module = importlib.import_module(f"reward_service.scorers.{SCORER_MODULES[name]}")
    return module.build(**options)
