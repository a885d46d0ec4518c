"""CLIPScore reward: CLIP's `logits_per_image` diagonal (logit_scale · cos(text, image)) / 100.

`ClipSimilarity` is the whole computation; PickScore (pickscore.py) is the same with its own checkpoint and /26.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reward_service.scorers import Scores

MODEL = "openai/clip-vit-large-patch14"
DIVISOR = 100.0


class ClipSimilarity:
    """score_i = logit_scale.exp() · cos(text_i, image_i) / divisor, each image with its own prompt."""

    def __init__(self, name: str, model: str, processor: str, divisor: float, device: str) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.name, self.divisor, self.device = name, divisor, device
        self.model = CLIPModel.from_pretrained(model).eval().to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(processor)
        # The PIL backend is the reference's CLIP preprocessing (bicubic resize, centre crop); the torchvision
        # backend, picked by default where torchvision is installed, resizes slightly differently.
        self.image_processor = AutoImageProcessor.from_pretrained(processor, backend="pil")

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        import torch

        pixel_values = self.image_processor(images=list(images), return_tensors="pt").pixel_values  # (N, 3, S, S)
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            output = self.model(input_ids=text.input_ids.to(self.device),
                                attention_mask=text.attention_mask.to(self.device),
                                pixel_values=pixel_values.to(self.device))
        scores = output.logits_per_image.diagonal() / self.divisor  # (N,): image i against its own prompt i
        return {self.name: scores.float().cpu().tolist()}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build(**options: str) -> ClipSimilarity:
    """Options (strings, RewardConfig.scorer_args): model, processor (hub id or local dir), device."""
    unknown = sorted(set(options) - {"model", "processor", "device"})
    if unknown:
        raise ValueError(f"clipscore has no options {unknown}; it takes model, processor, device")
    model = options.get("model", MODEL)
    return ClipSimilarity("clipscore", model=model, processor=options.get("processor", model), divisor=DIVISOR,
                          device=options.get("device") or default_device())
