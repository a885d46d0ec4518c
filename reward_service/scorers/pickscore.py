"""PickScore reward: the PickScore_v1 CLIP-H fine-tune, logit_scale · cos(text, image) / 26.

The computation is CLIPScore's (clipscore.ClipSimilarity); only the checkpoint, processor and divisor differ.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from reward_service.scorers.clipscore import ClipSimilarity, default_device

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PickScore ships no processor; it was trained with this one's
DIVISOR = 26.0  # the reference's normalisation


def build(**options: str) -> ClipSimilarity:
    """Options (strings, RewardConfig.scorer_args): model, processor (hub id or local dir), device."""
    unknown = sorted(set(options) - {"model", "processor", "device"})
    if unknown:
        raise ValueError(f"pickscore has no options {unknown}; it takes model, processor, device")
    return ClipSimilarity("pickscore", model=options.get("model", MODEL), processor=options.get("processor", PROCESSOR),
                          divisor=DIVISOR, device=options.get("device") or default_device())
