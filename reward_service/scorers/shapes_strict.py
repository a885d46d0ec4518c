"""`shapes_strict`: the shapes-world scorer with GenEval's strict 0/1 as its training score.

Same detector and verdicts as `shapes`; it reports both keys, so `reward.weights: {shapes_strict: 1.0}` trains on
strict and `{shapes: 0.5, shapes_strict: 0.5}` on an even mix of partial and strict.
"""

from __future__ import annotations

from typing import Any

from reward_service.scorers.shapes import ShapesScorer, build_options


class ShapesStrictScorer(ShapesScorer):
    name = "shapes_strict"


def build(**options: Any) -> ShapesStrictScorer:
    """Options as for `shapes`: color_threshold, min_area_fraction, position_margin."""
    return ShapesStrictScorer(**build_options(options))
