"""JPEG compressibility reward (as the reference computes it): score = −kB/500, kB = JPEG bytes at quality 95 / 1000.

Needs no model, so it is the offline scorer of the reward-service tests.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from reward_service.scorers import Scores


class JpegCompressibility:
    name = "jpeg_compressibility"

    def __init__(self, quality: int = 95) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg_compressibility quality {quality} must be in 1..100 (the reference uses 95)")
        self.quality = quality

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"jpeg_compressibility needs (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        scores: list[float | None] = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=self.quality)
            scores.append(-(buffer.tell() / 1000) / 500)
        return {self.name: scores}


def build(**options: str) -> JpegCompressibility:
    """Options arrive as strings (RewardConfig.scorer_args): quality=<1..100>."""
    unknown = sorted(set(options) - {"quality"})
    if unknown:
        raise ValueError(f"jpeg_compressibility has no options {unknown}; it takes quality=<1..100>")
    return JpegCompressibility(quality=int(options.get("quality", 95)))
