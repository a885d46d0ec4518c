"""The `shapes` scorer: a rule-based GenEval detector for the shapes world (the embedded default's reward).

Colour segmentation → connected components → shape by geometry → GenEval's checks of counts, colours, positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# The world's vocabulary. actors/shapes_world.py renders with these; the detector looks for them.
SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 45, 45),
    "yellow": (240, 215, 40),
    "green": (40, 190, 70),
    "blue": (45, 95, 240),
    "white": (240, 240, 240),
}
BACKGROUND = (20, 20, 28)
PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # (1 + colours, 3): index 0 is background
RELATIONS = ("left of", "right of", "above", "below")
POSITION_MARGIN = 0.1  # GenEval's: a fraction of the two boxes' summed sizes

# Shape by geometry of the soft coverage α (how much of a pixel the object covers, read from its colour), which
# stays exact at 7 px where hard masks turn circles into squares. fill = Σα / (width · height), width and height
# being sums of the per-column and per-row maxima of α: square 1, circle π/4, triangle 1/2. An upright triangle's
# centroid sits 1/6 of its height below its centre ("drop"); a circle's and a square's on it.
# A dark or off-colour speckle inside a blob counts as a hole, so a speckled square reads as a circle. That strictness
# is a quality prior the training reward needs: a variant that forgave speckles inside convex shapes was exploited by
# bloated, striped shapes within a few hundred updates (docs/measurements.md, 'Speckles inside a shape').
SQUARE_MIN_FILL = 0.89
CIRCLE_MIN_FILL = 0.65
TRIANGLE_MIN_FILL = 0.35
TRIANGLE_MIN_DROP = 0.06
MAX_ASPECT = 2.0  # a blob more than twice as long as wide is no shape of this world


@dataclass(frozen=True)
class DetectedObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
    area: int  # pixels


@dataclass(frozen=True)
class Verdict:
    strict: bool  # every requirement met, counts exact (GenEval's strict score)
    partial: float  # mean of the requirement terms in [0, 1] (the dense training score)


def segment(images: np.ndarray, color_threshold: float) -> np.ndarray:
    """Per pixel: index into COLORS of the nearest palette colour, or -1 (background, or no colour within reach)."""
    pixels = images.reshape(-1, 1, 3).astype(np.float32)
    dist2 = ((pixels - PALETTE[None]) ** 2).sum(-1)  # (P, 1 + colours)
    nearest = dist2.argmin(-1)
    near_enough = dist2[np.arange(len(nearest)), nearest] <= color_threshold**2
    labels = np.where(near_enough, nearest - 1, -1)  # background (index 0) becomes -1 as well
    return labels.reshape(images.shape[:3]).astype(np.int8)


def _components(colors: np.ndarray) -> np.ndarray:
    """4-connected components of equal colour over a batch (N, H, W): each pixel gets its component's smallest flat
    pixel index, background gets -1. Min-label propagation plus pointer jumping, so few passes even for big blobs."""
    n, h, w = colors.shape
    fg = colors >= 0
    size = n * h * w
    labels = np.where(fg, np.arange(size).reshape(n, h, w), size)
    same_x = fg[:, :, 1:] & (colors[:, :, 1:] == colors[:, :, :-1])  # pixel joined to its left neighbour
    same_y = fg[:, 1:, :] & (colors[:, 1:, :] == colors[:, :-1, :])  # pixel joined to the one above
    while True:
        new = labels.copy()
        new[:, :, 1:] = np.where(same_x, np.minimum(new[:, :, 1:], labels[:, :, :-1]), new[:, :, 1:])
        new[:, :, :-1] = np.where(same_x, np.minimum(new[:, :, :-1], labels[:, :, 1:]), new[:, :, :-1])
        new[:, 1:, :] = np.where(same_y, np.minimum(new[:, 1:, :], labels[:, :-1, :]), new[:, 1:, :])
        new[:, :-1, :] = np.where(same_y, np.minimum(new[:, :-1, :], labels[:, 1:, :]), new[:, :-1, :])
        flat = new.reshape(-1)
        flat[fg.reshape(-1)] = flat[flat[fg.reshape(-1)]]  # a label is a pixel of the same blob: jump to its label
        if np.array_equal(new, labels):
            return np.where(fg, labels, -1)
        labels = new


def _shape_of(image: np.ndarray, colors: np.ndarray, color: int, box: tuple[int, int, int, int]) -> str | None:
    """Classify one blob of colour index `color` (hard box x0, y0, x1, y1) of an (H, W, 3) image by its soft coverage
    in the box grown by a pixel, where the anti-aliased rim lies; pixels of other colours are left out."""
    x0, y0, x1, y1 = box
    if max(x1 - x0, y1 - y0) > MAX_ASPECT * min(x1 - x0, y1 - y0):
        return None
    y0, x0 = max(y0 - 1, 0), max(x0 - 1, 0)
    window = image[y0:y1 + 1, x0:x1 + 1].astype(np.float32) - BACKGROUND
    direction = PALETTE[color + 1] - PALETTE[0]
    alpha = np.clip(window @ direction / (direction @ direction), 0.0, 1.0)  # (h, w)
    window_colors = colors[y0:y1 + 1, x0:x1 + 1]
    alpha *= (window_colors == color) | (window_colors < 0)
    rows, columns = alpha.max(axis=1), alpha.max(axis=0)
    area, height = alpha.sum(), rows.sum()
    fill = area / (columns.sum() * height)
    centroid_y = (alpha.sum(axis=1) * np.arange(len(rows))).sum() / area
    middle_y = (rows * np.arange(len(rows))).sum() / height
    if (centroid_y - middle_y) / height >= TRIANGLE_MIN_DROP:
        return "triangle" if fill >= TRIANGLE_MIN_FILL else None
    if fill >= SQUARE_MIN_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_MIN_FILL else None


def detect(images: np.ndarray, color_threshold: float = 80.0, min_area: int = 12) -> list[list[DetectedObject]]:
    """Objects in each image of a batch (N, H, W, 3) uint8; blobs under `min_area` pixels are noise and dropped."""
    n, h, w, _ = images.shape
    colors = segment(images, color_threshold)  # (N, H, W)
    labels = _components(colors).reshape(-1)
    objects: list[list[DetectedObject]] = [[] for _ in range(n)]
    pixels = np.flatnonzero(labels >= 0)
    if len(pixels) == 0:
        return objects
    pixels = pixels[np.argsort(labels[pixels], kind="stable")]  # foreground pixels grouped by component
    sorted_labels = labels[pixels]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    areas = np.diff(np.r_[starts, len(pixels)])
    ys, xs = (pixels % (h * w)) // w, pixels % w
    x0, x1 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts) + 1
    y0, y1 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts) + 1
    color_names = list(COLORS)
    for i in np.flatnonzero(areas >= min_area):
        pixel = pixels[starts[i]]
        image_index, color = pixel // (h * w), int(colors.reshape(-1)[pixel])
        box = (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i]))
        shape = _shape_of(images[image_index], colors[image_index], color, box)
        if shape is not None:
            objects[image_index].append(DetectedObject(shape, color_names[color], box, int(areas[i])))
    return objects


def relative_position(a: tuple[float, ...], b: tuple[float, ...], margin: float = POSITION_MARGIN) -> set[str]:
    """GenEval's relations of box a to box b: the centre offset, shrunk by `margin` times the summed box sizes per
    axis, must point mostly (> 0.5 of the offset's length) along the relation's direction."""
    center_a = np.array([a[0] + a[2], a[1] + a[3]]) / 2
    center_b = np.array([b[0] + b[2], b[1] + b[3]]) / 2
    dims = np.array([a[2] - a[0] + b[2] - b[0], a[3] - a[1] + b[3] - b[1]])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - margin * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {relation for relation, holds in found.items() if holds}


def evaluate(objects: list[DetectedObject], metadata: dict[str, Any], margin: float = POSITION_MARGIN) -> Verdict:
    """GenEval's checks as its reward server runs them: counts are exact; colour and position terms are 0 unless the
    count is right; `position: [relation, i]` compares with the objects that met include requirement i."""
    terms: list[float] = []
    met_groups: list[list[DetectedObject] | None] = []
    strict = True
    for requirement in metadata["include"]:
        found = [obj for obj in objects if obj.shape == requirement["class"]]
        wanted = requirement["count"]
        terms.append(min(max(1 - abs(len(found) - wanted) / wanted, 0.0), 1.0))
        met = len(found) == wanted
        if "color" in requirement:
            colored = sum(obj.color == requirement["color"] for obj in found)
            terms.append(1 - abs(wanted - colored) / wanted if met else 0.0)
            met = met and colored == wanted
        if "position" in requirement:
            relation, target = requirement["position"]
            targets = met_groups[target]
            met = met and targets is not None and all(
                relation in relative_position(obj.box, other.box, margin) for obj in found for other in targets)
            terms.append(float(met))
        met_groups.append(found if met else None)
        strict = strict and met
    for requirement in metadata.get("exclude", []):
        excluded = [obj for obj in objects if obj.shape == requirement["class"]
                    and requirement.get("color", obj.color) == obj.color]
        strict = strict and len(excluded) < requirement["count"]
    return Verdict(strict=strict, partial=float(np.mean(terms)))


def _check_requirement(requirement: Any, where: str, index: int, in_include: bool) -> None:
    if not isinstance(requirement, dict):
        raise ValueError(f"{where}[{index}] must be a dict like {{'class': 'circle', 'count': 1}}, got {requirement!r}")
    if requirement.get("class") not in SHAPES:
        raise ValueError(f"{where}[{index}]['class'] is {requirement.get('class')!r}; the shapes world knows "
                         f"{', '.join(SHAPES)}: use prompts made by actors/shapes_world.py")
    count = requirement.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}[{index}]['count'] must be a positive int, got {count!r}")
    if "color" in requirement and requirement["color"] not in COLORS:
        raise ValueError(f"{where}[{index}]['color'] is {requirement['color']!r}; the shapes world knows "
                         f"{', '.join(COLORS)}")
    if "position" in requirement:
        position = requirement["position"]
        if not in_include:
            raise ValueError(f"{where}[{index}] has a 'position'; positions belong in 'include' requirements only")
        if (not isinstance(position, (list, tuple)) or len(position) != 2 or position[0] not in RELATIONS
                or not isinstance(position[1], int) or not 0 <= position[1] < index):
            raise ValueError(f"{where}[{index}]['position'] must be [relation, i] with relation in {RELATIONS} and "
                             f"i the index of an earlier include requirement (0..{index - 1}), got {position!r}")


def check_metadata(record: Any, where: str = "metadata") -> None:
    """Raise ValueError naming the problem if `record` is not GenEval metadata of the shapes world."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be a dict of GenEval metadata (tag, include, exclude, prompt), got "
                         f"{type(record).__name__}")
    include = record.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"{where}['include'] must be a non-empty list of requirements like "
                         f"[{{'class': 'circle', 'count': 1}}], got {include!r}")
    for index, requirement in enumerate(include):
        _check_requirement(requirement, f"{where}['include']", index, in_include=True)
    exclude = record.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"{where}['exclude'] must be a list of requirements, got {exclude!r}")
    for index, requirement in enumerate(exclude):
        _check_requirement(requirement, f"{where}['exclude']", index, in_include=False)


def check_images(images: Any) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = (f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3), got {got}; convert float images in "
                         f"[0, 1] with (x * 255).round().clip(0, 255).astype(np.uint8)")


class ShapesScorer:
    """Scores images against shapes-world GenEval metadata: `shapes` (dense partial) and `shapes_strict` (0/1)."""

    name = "shapes"

    def __init__(self, color_threshold: float = 80.0, min_area_fraction: float = 0.012,
                 position_margin: float = POSITION_MARGIN):
        if color_threshold <= 0 or not 0 <= min_area_fraction < 1 or position_margin < 0:
            raise ValueError(f"shapes scorer options out of range: need color_threshold ({color_threshold}) > 0, "
                             f"0 <= min_area_fraction ({min_area_fraction}) < 1, "
                             f"position_margin ({position_margin}) >= 0")
        self.color_threshold = color_threshold
        self.min_area_fraction = min_area_fraction
        self.position_margin = position_margin

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> dict[str, list]:
        check_images(images)
        if len(prompts) != len(images) or len(metadata) != len(images):
            raise ValueError(f"got {len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata records; "
                             f"pass one prompt and one metadata record per image")
        for i, record in enumerate(metadata):
            check_metadata(record, f"metadata[{i}]")
        _, h, w, _ = images.shape
        min_area = max(2, round(self.min_area_fraction * h * w))
        detected = detect(images, self.color_threshold, min_area)
        verdicts = [evaluate(objects, record, self.position_margin)
                    for objects, record in zip(detected, metadata, strict=True)]
        return {"shapes": [v.partial for v in verdicts], "shapes_strict": [float(v.strict) for v in verdicts]}


def build(**options: Any) -> ShapesScorer:
    """Options may arrive as strings (reward.scorer_args in the config): color_threshold, min_area_fraction,
    position_margin."""
    return ShapesScorer(**build_options(options))


def build_options(options: dict[str, Any]) -> dict[str, float]:
    """The scorer's keyword arguments from config options (strings allowed); unknown names are errors."""
    known = ("color_threshold", "min_area_fraction", "position_margin")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown shapes scorer option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        values = {key: float(value) for key, value in options.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"shapes scorer options must be numbers: {error}") from None
    return values
