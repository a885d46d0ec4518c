"""Wire protocol of the reward service, shared by `server` and `client`: request, response, error, image codec.

Images travel as base64 PNG (lossless, so every replica scores exactly the pixels the sampler drew).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reward_service.scorers import Scores

MAX_PROMPT_CHARS = 4096  # a prompt longer than this is refused: scorers (OCR's edit distance) cost grows with it


class ScoreRequest(BaseModel):
    """POST /v1/score body: N images with their prompts and GenEval-style metadata."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(..., description="one prompt per image")
    metadata: list[dict[str, Any]] = Field(
        default_factory=list, description="one dict per image (GenEval tags, objects, ...); empty = no metadata")
    images: list[str] = Field(..., min_length=1, description="base64 PNG, RGB, all of one size")
    scorers: list[str] | None = Field(None, min_length=1, description="scorers to run; null = every served scorer")

    @model_validator(mode="after")
    def _check_lengths(self) -> ScoreRequest:
        if len(self.prompts) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.prompts)} prompts: send one prompt per image")
        long = [i for i, prompt in enumerate(self.prompts) if len(prompt) > MAX_PROMPT_CHARS]
        if long:
            raise ValueError(f"prompt {long[0]} has {len(self.prompts[long[0]])} characters ({len(long)} prompts over "
                             f"the limit): send prompts of at most {MAX_PROMPT_CHARS} characters")
        if not self.metadata:
            self.metadata = [{} for _ in self.images]
        elif len(self.metadata) != len(self.images):
            raise ValueError(
                f"{len(self.images)} images but {len(self.metadata)} metadata dicts: send one per image or none")
        return self


class ScoreResponse(BaseModel):
    """Scores per key (each scorer's `name` plus its reported extras); None = the scorer failed on that image."""

    scores: Scores
    elapsed_s: float = Field(..., description="seconds the server spent on the request, queueing included")


class ScorersResponse(BaseModel):
    """GET /v1/scorers: what this replica serves and the limits it enforces."""

    scorers: list[str]
    max_batch: int
    max_image_side: int
    max_body_bytes: int
    max_request_pixels: int
    max_prompt_chars: int


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer: one sentence naming the problem and, where there is one, the fix."""

    error: str


class ImageTooLargeError(ValueError):
    """An image side exceeds the server's `max_image_side` (answered with 413)."""


def encode_images(images: np.ndarray) -> list[str]:
    """(N, H, W, 3) uint8 -> N base64 PNG strings."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        # compress_level 1: the PNG is a transport format here; level 6 costs ~4x the CPU for ~15% fewer bytes.
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def decode_images(encoded: list[str], max_side: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """N base64 PNG strings -> (N, H, W, 3) uint8. Raises ValueError naming the bad image and why, and
    ImageTooLargeError for an image over `max_side` or a request over `max_pixels` decoded pixels in all (both
    checked on the PNG headers before decoding, so small compressed images of huge size cost no memory)."""
    if not encoded:
        raise ValueError("no images: send at least one")
    arrays, pixels = [], 0
    for index, text in enumerate(encoded):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"image {index} is not valid base64 ({e}); send base64-encoded PNG bytes") from None
        try:
            image = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"image {index}: {e}; max_image_side is {max_side} pixels") from None
        except OSError:
            raise ValueError(f"image {index} is not a readable image; send base64-encoded PNG bytes") from None
        if image.format != "PNG":
            raise ValueError(f"image {index} is {image.format}, not PNG; send lossless PNG")
        width, height = image.size
        # Checked on the header, before decoding, so an oversized image costs no memory.
        if max_side is not None and max(width, height) > max_side:
            raise ImageTooLargeError(f"image {index} is {width}x{height}, over max_image_side ({max_side} pixels)")
        pixels += width * height
        if max_pixels is not None and pixels > max_pixels:
            raise ImageTooLargeError(f"images 0..{index} hold {pixels} pixels, over max_request_pixels ({max_pixels}); "
                                     "send fewer or smaller images per request")
        if image.mode != "RGB":
            raise ValueError(f"image {index} has mode {image.mode!r}; send RGB (H, W, 3) uint8 images")
        try:
            image.load()
            array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"image {index} is a corrupt PNG ({e})") from None
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"image {index} is {width}x{height} but image 0 is {arrays[0].shape[1]}x{arrays[0].shape[0]}: "
                "one request holds images of one size")
        arrays.append(array)
    return np.stack(arrays)  # (N, H, W, 3)


def checked_scores(name: str, raw: Any, n: int) -> Scores:
    """A scorer's output as the wire carries it: {name: [n values], ...}, each a finite float or None.

    A non-finite value is the scorer failing on that image (JSON has no NaN). A broken contract is RuntimeError.
    """
    if not isinstance(raw, dict) or name not in raw:
        raise RuntimeError(f"scorer {name!r} broke its contract: returned {type(raw).__name__} without key {name!r}")
    scores: Scores = {}
    for key, values in raw.items():
        if len(values) != n:
            raise RuntimeError(f"scorer {name!r} broke its contract: {len(values)} values under {key!r} for {n} images")
        scores[key] = [None if v is None or not math.isfinite(v) else float(v) for v in values]
    return scores
