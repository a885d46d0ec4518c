"""Model families behind one contract (actors/families/base.py); `family_class` picks one from model_index.json."""

from __future__ import annotations

from typing import Any

from actors.families.base import Conditioning, Family
from actors.families.flux import Flux
from actors.families.qwenimage import QwenImage
from actors.families.sd3 import SD3

FAMILIES: dict[str, type[Family]] = {family.pipeline_class: family for family in (SD3, Flux, QwenImage)}

__all__ = ["FAMILIES", "Conditioning", "Family", "family_class"]


def family_class(index: dict[str, Any], pretrained: str) -> type[Family]:
    """The family of a diffusers pipeline, from its model_index.json `_class_name`."""
    name = index.get("_class_name")
    if name not in FAMILIES:
        raise ValueError(f"policy.pretrained {pretrained!r} is a {name!r}; supported pipelines: {sorted(FAMILIES)}")
    return FAMILIES[name]
