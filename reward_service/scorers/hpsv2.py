"""HPSv2.1 reward: open_clip ViT-H-14 with the HPS_v2.1 weights; score = image · text of the normalised
features (their cosine). Needs the hpsv2 extra (open_clip_torch, which needs torchvision).
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reward_service.scorers import Scores
from reward_service.scorers.clipscore import default_device

ARCH = "ViT-H-14"
CHECKPOINT_REPO, CHECKPOINT_FILE = "xswu/HPSv2", "HPS_v2.1_compressed.pt"


class HpsV2Scorer:
    name = "hpsv2"

    def __init__(self, checkpoint: str, arch: str, device: str) -> None:
        import torch

        try:
            import open_clip
        except (ImportError, RuntimeError) as error:  # a torchvision built for another torch fails with RuntimeError
            raise ImportError(f"hpsv2 needs open_clip_torch and a torchvision built for this torch ({error}): "
                              "pip install -e '.[hpsv2]'") from error
        # The HPS checkpoint holds every weight of the ViT-H-14 CLIP, so no open_clip pretrained tag is loaded first.
        model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        self.model = model.eval().to(device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = device

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        import torch

        # open_clip's eval transform: resize the short side to 224 (bicubic), centre crop, CLIP mean/std.
        pixels = torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        tokens = self.tokenizer(prompts).to(self.device)  # (N, 77)
        with torch.no_grad():
            image_features = self.model.encode_image(pixels, normalize=True)  # (N, D), unit norm
            text_features = self.model.encode_text(tokens, normalize=True)
        scores = (image_features * text_features).sum(-1)  # (N,): image i against its own prompt i
        return {self.name: scores.float().cpu().tolist()}


def build(**options: str) -> HpsV2Scorer:
    """Options (strings, RewardConfig.scorer_args): checkpoint (local HPS_v2.1_compressed.pt; default: download
    xswu/HPSv2 from the hub), arch (open_clip model config, ViT-H-14 for HPSv2.1), device."""
    unknown = sorted(set(options) - {"checkpoint", "arch", "device"})
    if unknown:
        raise ValueError(f"hpsv2 has no options {unknown}; it takes checkpoint, arch, device")
    checkpoint = options.get("checkpoint")
    if checkpoint is None:
        from huggingface_hub import hf_hub_download

        checkpoint = hf_hub_download(CHECKPOINT_REPO, CHECKPOINT_FILE)
    elif not Path(checkpoint).is_file():
        raise ValueError(f"hpsv2 checkpoint {checkpoint!r} is not a file; give the path of {CHECKPOINT_FILE} "
                         f"(from the hub repo {CHECKPOINT_REPO}) or leave it out to download it")
    return HpsV2Scorer(checkpoint=checkpoint, arch=options.get("arch", ARCH),
                       device=options.get("device") or default_device())
