"""ImageReward reward: THUDM's ImageReward-v1.0 (BLIP ViT-L + MLP head) through the `image-reward`
package; score = its normalised reward per (prompt, image). image-reward 1.5 imports helpers that transformers 5
removed and pins timm 0.6.13, so it runs in a reward server of its own environment (see the imagereward extra).
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from reward_service.scorers import Scores
from reward_service.scorers.clipscore import default_device

MODEL = "ImageReward-v1.0"


class ImageRewardScorer:
    name = "imagereward"

    def __init__(self, model: str, med_config: str | None, download_root: str | None, device: str) -> None:
        try:
            import ImageReward as image_reward
        except ImportError as error:
            raise ImportError(f"imagereward needs the image-reward package and its pinned stack ({error}): "
                              "pip install image-reward in an environment with transformers<5, torchvision") from error
        # `model` is a name the package knows (downloaded from the THUDM/ImageReward hub repo) or a checkpoint path;
        # med_config None downloads the BLIP text-encoder config from the same repo.
        self.model = image_reward.load(model, device=device, download_root=download_root, med_config=med_config)

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        import torch

        # One image at a time, as the reference: the package scores a (prompt, PIL image) pair.
        with torch.no_grad():
            scores = [float(self.model.score(prompt, Image.fromarray(image)))
                      for image, prompt in zip(images, prompts, strict=True)]
        return {self.name: scores}


def build(**options: str) -> ImageRewardScorer:
    """Options (strings, RewardConfig.scorer_args): model (ImageReward-v1.0 or a local ImageReward.pt), med_config
    (local med_config.json), download_root (cache dir of the package), device."""
    unknown = sorted(set(options) - {"model", "med_config", "download_root", "device"})
    if unknown:
        raise ValueError(f"imagereward has no options {unknown}; it takes model, med_config, download_root, device")
    return ImageRewardScorer(model=options.get("model", MODEL), med_config=options.get("med_config"),
                             download_root=options.get("download_root"),
                             device=options.get("device") or default_device())
