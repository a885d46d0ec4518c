"""OCR reward: how well the image spells the prompt's quoted text, read with PP-OCR through rapidocr.

score = 1 − min(Levenshtein(recognised, target), len(target)) / len(target), 1 when target ⊂ recognised.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reward_service.scorers import Scores


def target_text(prompt: str) -> str:
    """The prompt's double-quoted part, lowercased, spaces removed: `a sign that says "Open Now"` → `opennow`."""
    parts = prompt.split('"')
    if len(parts) < 3 or not parts[1].replace(" ", ""):
        raise ValueError(f'ocr prompts must hold the target text in double quotes, e.g. a sign saying "hello"; '
                         f"got {prompt!r}")
    return parts[1].lower().replace(" ", "")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each 1), one DP row at a time."""
    row = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, char_b in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (char_a != char_b))
    return row[-1]


def ocr_score(recognised: str, target: str) -> float:
    """The reference's formula on lowercase text without spaces; `target` is already normalised."""
    text = recognised.lower().replace(" ", "")
    if target in text:
        return 1.0
    return 1.0 - min(levenshtein(text, target), len(target)) / len(target)


class OcrScorer:
    name = "ocr"

    def __init__(self, text_score: float = 0.0) -> None:
        from rapidocr import RapidOCR  # heavy (onnxruntime sessions): only when this scorer is built

        # The reference keeps every recognised line (PaddleOCR without the angle classifier); rapidocr's default
        # drops lines below 0.5 confidence, so the threshold is an option, default 0.
        self.engine = RapidOCR(params={"Global.use_cls": False, "Global.text_score": text_score,
                                       "Global.log_level": "error"})

    def recognise(self, image: np.ndarray) -> str:
        """All text lines found in one (H, W, 3) RGB image, joined in reading order of the detector."""
        # rapidocr takes ndarrays as BGR (OpenCV order, what the PP-OCR models were trained on).
        result = self.engine(np.ascontiguousarray(image[..., ::-1]))
        return "".join(result.txts or ())

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        targets = [target_text(prompt) for prompt in prompts]  # a prompt without quotes is a dataset error: raise
        scores: list[float | None] = []
        for image, target in zip(images, targets, strict=True):
            try:
                recognised = self.recognise(image)
            except Exception:  # noqa: BLE001 -- an OCR crash is this image's failure, counted upstream, never a score
                scores.append(None)
                continue
            scores.append(ocr_score(recognised, target))
        return {self.name: scores}


def build(**options: str) -> OcrScorer:
    """Options (strings, RewardConfig.scorer_args): text_score=<min line confidence kept, default 0>."""
    unknown = sorted(set(options) - {"text_score"})
    if unknown:
        raise ValueError(f"ocr has no options {unknown}; it takes text_score=<0..1>")
    text_score = float(options.get("text_score", 0.0))
    if not 0.0 <= text_score <= 1.0:
        raise ValueError(f"ocr text_score {text_score} must be in [0, 1]")
    return OcrScorer(text_score=text_score)
