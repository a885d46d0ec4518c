"""Aesthetic reward: LAION's improved aesthetic predictor, an MLP on the L2-normalised CLIP ViT-L/14
image embedding (`sac+logos+ava1-l14-linearMSE.pth`); scores run roughly 1-10. The prompt is not used.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reward_service.scorers import Scores
from reward_service.scorers.clipscore import default_device

MODEL = "openai/clip-vit-large-patch14"
HEAD_SOURCE = "https://github.com/christophschuhmann/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth)"


def aesthetic_head(embed_dim: int) -> Any:
    """The predictor's MLP: linear layers 768→1024→128→64→16→1 with dropouts and no activations, as trained.
    Indices match the checkpoint's `layers.<i>` keys."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(embed_dim, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class AestheticScorer:
    name = "aesthetic"

    def __init__(self, model: str, processor: str, head: str, device: str) -> None:
        import torch
        from transformers import AutoImageProcessor, CLIPModel

        self.device = device
        self.clip = CLIPModel.from_pretrained(model).eval().to(device)  # only the vision tower is used
        # PIL backend: the reference's CLIP preprocessing (see clipscore.py).
        self.image_processor = AutoImageProcessor.from_pretrained(processor, backend="pil")
        state = torch.load(head, map_location="cpu", weights_only=True)
        self.head = aesthetic_head(self.clip.config.projection_dim)
        # The file is the state dict of a module holding the MLP as `layers`; strict loading names any mismatch.
        self.head.load_state_dict({key.removeprefix("layers."): value for key, value in state.items()})
        self.head.eval().to(device)

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        import torch

        pixel_values = self.image_processor(images=list(images), return_tensors="pt").pixel_values  # (N, 3, S, S)
        with torch.no_grad():
            pooled = self.clip.vision_model(pixel_values=pixel_values.to(self.device)).pooler_output
            embeds = self.clip.visual_projection(pooled)  # (N, D): CLIP's image embedding
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
            scores = self.head(embeds).squeeze(1)  # (N,)
        return {self.name: scores.float().cpu().tolist()}


def build(**options: str) -> AestheticScorer:
    """Options (strings, RewardConfig.scorer_args): head (path to the MLP weights, required), model, processor,
    device."""
    unknown = sorted(set(options) - {"head", "model", "processor", "device"})
    if unknown:
        raise ValueError(f"aesthetic has no options {unknown}; it takes head, model, processor, device")
    head = options.get("head")
    if not head or not Path(head).is_file():
        raise ValueError(f"aesthetic needs head=<path to the MLP weights> (got {head!r}); download them from "
                         f"{HEAD_SOURCE}")
    model = options.get("model", MODEL)
    return AestheticScorer(model=model, processor=options.get("processor", model), head=head,
                           device=options.get("device") or default_device())
