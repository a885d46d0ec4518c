"""The shapes world: GenEval-style scenes of coloured shapes, their renders, prompts and noisy captions.

Feeds the embedded default: (render, noisy caption) pairs for pretraining, and the RL prompt sets in GenEval metadata
(`python -m actors.shapes_world --out configs/prompts`). The `shapes` scorer owns the vocabulary and the detector.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reward_service.scorers.shapes import (
    BACKGROUND,
    COLORS,
    POSITION_MARGIN,
    RELATIONS,
    SHAPES,
    check_metadata,
    relative_position,
)

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
COUNTS = (2, 3, 4)  # GenEval's counting prompts
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
VOCABULARY = tuple(sorted({
    "a", "photo", "of", "and", "some", *NUMBER_WORDS.values(), *COLORS, *SHAPES, *(shape + "s" for shape in SHAPES),
    *(word for relation in RELATIONS for word in relation.split()),
}))

SIZE_RANGE = (0.30, 0.38)  # side of an object's bounding box, fraction of the image side (9.6-12.2 px at 32)
GAP = 0.08  # empty space kept between bounding boxes: objects never touch, rims never mix
BORDER = 0.03  # empty space kept at the image edge
# Placement demands the relation with a wider margin than the scorer's, so a render stays correct after
# anti-aliasing and segmentation shrink the boxes by a pixel, and no second relation at the scorer's margin.
PLACEMENT_MARGIN = 0.25
SUPERSAMPLE = 4  # anti-aliasing: render at 4x and average
TRAIN_ROWS_PER_TAG, TEST_ROWS_PER_TAG = 100, 20
MAX_TEST_FORMS = 10  # held-out canonical forms per tag (color_attr has 60; the rest stay for training)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    x: float  # centre, fraction of the image width
    y: float  # centre, fraction of the image height (0 at the top)
    size: float  # side of the bounding box, fraction of the image side

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.x - half, self.y - half, self.x + half, self.y + half)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    metadata: dict[str, Any]  # the GenEval record this scene satisfies; prompt_text(its include) is the clean caption


@dataclass(frozen=True)
class CaptionedImage:
    image: np.ndarray  # (H, W, 3) uint8
    caption: str  # noisy caption used for pretraining
    metadata: dict[str, Any]  # what the image really shows


@dataclass(frozen=True)
class PromptSplit:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]


def _noun_phrase(requirement: dict[str, Any]) -> str:
    count = requirement.get("count")  # None only in captions whose count was dropped
    words = ["some" if count is None else NUMBER_WORDS[count]]
    if "color" in requirement:
        words.append(requirement["color"])
    words.append(requirement["class"] + ("" if count == 1 else "s"))
    return " ".join(words)


def prompt_text(include: list[dict[str, Any]]) -> str:
    """GenEval's wording: 'a photo of a red circle', 'a photo of three squares', 'a photo of a circle left of a
    square' (include[1] relative to include[0])."""
    if len(include) == 2 and "position" in include[1]:
        return f"a photo of {_noun_phrase(include[1])} {include[1]['position'][0]} {_noun_phrase(include[0])}"
    return "a photo of " + " and ".join(_noun_phrase(requirement) for requirement in include)


def _record(tag: str, include: list[dict[str, Any]], exclude: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"tag": tag, "include": include}
    if exclude:
        record["exclude"] = exclude
    record["prompt"] = prompt_text(include)
    return record


def all_records(tag: str) -> list[dict[str, Any]]:
    """Every distinct GenEval record of a tag in this world, in a fixed order."""
    one = lambda shape, **extra: {"class": shape, "count": 1, **extra}
    pairs = list(itertools.permutations(SHAPES, 2))  # two different classes, as in GenEval
    if tag == "single_object":
        return [_record(tag, [one(shape)]) for shape in SHAPES]
    if tag == "two_object":
        return [_record(tag, [one(a), one(b)]) for a, b in pairs]
    if tag == "counting":
        return [_record(tag, [{"class": shape, "count": n}], [{"class": shape, "count": n + 1}])
                for shape in SHAPES for n in COUNTS]
    if tag == "colors":
        return [_record(tag, [one(shape, color=color)]) for shape in SHAPES for color in COLORS]
    if tag == "position":
        return [_record(tag, [one(a), one(b, position=[relation, 0])]) for a, b in pairs for relation in RELATIONS]
    if tag == "color_attr":
        return [_record(tag, [one(a, color=color_a), one(b, color=color_b)])
                for a, b in pairs for color_a, color_b in itertools.permutations(COLORS, 2)]
    raise ValueError(f"unknown tag {tag!r}; GenEval's tags are {', '.join(TAGS)}")


def canonical_form(metadata: dict[str, Any]) -> tuple:
    """Records with equal forms accept exactly the same images: the order around 'and' does not matter, and
    'a square right of a circle' is 'a circle left of a square'."""
    item = lambda requirement: (requirement["class"], requirement["count"], requirement.get("color", ""))
    include = metadata["include"]
    if len(include) == 2 and "position" in include[1]:
        subject, relation, reference = include[1], include[1]["position"][0], include[0]
        if relation in ("right of", "below"):
            subject, relation, reference = reference, OPPOSITE[relation], subject
        return ("position", item(subject), relation, item(reference))
    return tuple(sorted(item(requirement) for requirement in include))


_RECORDS = {tag: all_records(tag) for tag in TAGS}  # built once: pretraining samples tens of thousands


def sample_metadata(tag: str, rng: np.random.Generator) -> dict[str, Any]:
    if tag not in _RECORDS:
        raise ValueError(f"unknown tag {tag!r}; GenEval's tags are {', '.join(TAGS)}")
    records = _RECORDS[tag]
    return copy.deepcopy(records[rng.integers(len(records))])


def _fits(candidate: SceneObject, placed: list[SceneObject], targets: list[SceneObject], relation: str | None) -> bool:
    for other in placed:
        reach = (candidate.size + other.size) / 2 + GAP
        if abs(candidate.x - other.x) < reach and abs(candidate.y - other.y) < reach:
            return False
    return relation is None or all(
        relation in relative_position(candidate.box, target.box, PLACEMENT_MARGIN)
        and relative_position(candidate.box, target.box, POSITION_MARGIN) == {relation} for target in targets)


def place_scene(metadata: dict[str, Any], rng: np.random.Generator) -> Scene:
    """A random scene that satisfies a GenEval record of this world: exactly the required objects (colours drawn
    where the record names none), apart from each other, positions as required."""
    check_metadata(metadata)
    for _ in range(200):  # restart when sequential placement paints itself into a corner (rare)
        placed: list[SceneObject] = []
        groups: list[list[SceneObject]] = []
        for requirement in metadata["include"]:
            relation, target = requirement.get("position", (None, None))
            targets = groups[target] if relation else []
            group: list[SceneObject] = []
            for _ in range(requirement["count"]):
                for _ in range(100):
                    size = rng.uniform(*SIZE_RANGE)
                    x, y = rng.uniform(BORDER + size / 2, 1 - BORDER - size / 2, size=2)
                    color = requirement.get("color") or list(COLORS)[rng.integers(len(COLORS))]
                    candidate = SceneObject(requirement["class"], color, float(x), float(y), float(size))
                    if _fits(candidate, placed, targets, relation):
                        placed.append(candidate)
                        group.append(candidate)
                        break
                else:
                    break
            groups.append(group)
        if len(placed) == sum(requirement["count"] for requirement in metadata["include"]):
            return Scene(tuple(placed), metadata)
    raise AssertionError(f"no placement found for {prompt_text(metadata['include'])!r}; sizes leave no room")


def sample_scene(rng: np.random.Generator, tag: str | None = None) -> Scene:
    """A random scene of `tag` (uniform over GenEval's six tags when None)."""
    tag = tag or TAGS[rng.integers(len(TAGS))]
    return place_scene(sample_metadata(tag, rng), rng)


def _shape_mask(obj: SceneObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    half = obj.size / 2
    if obj.shape == "circle":
        return (xs - obj.x) ** 2 + (ys - obj.y) ** 2 <= half**2
    if obj.shape == "square":
        return (np.abs(xs - obj.x) <= half) & (np.abs(ys - obj.y) <= half)
    top = obj.y - half  # upright triangle: apex at the top centre, base along the bottom of the box
    return (ys >= top) & (ys <= obj.y + half) & (np.abs(xs - obj.x) <= (ys - top) / 2)


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """The scene as an anti-aliased (resolution, resolution, 3) uint8 image on the plain dark background."""
    side = resolution * SUPERSAMPLE
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side
    ys, xs = coords[:, None], coords[None, :]
    canvas = np.empty((side, side, 3), dtype=np.float32)
    canvas[:] = BACKGROUND
    for obj in scene.objects:
        canvas[_shape_mask(obj, xs, ys)] = COLORS[obj.color]
    image = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return image.round().astype(np.uint8)


def render_metadata(metadata: dict[str, Any], rng: np.random.Generator, resolution: int = 32) -> np.ndarray:
    """A ground-truth image for a GenEval record: a random placement satisfying it, rendered."""
    return render(place_scene(metadata, rng), resolution)


def noisy_caption(scene: Scene, rng: np.random.Generator, noise: float) -> str:
    """The scene's prompt, or, with probability `noise`, the prompt with one thing dropped or wrong, like a web
    caption: a count (wrong or 'some'), a colour (dropped, wrong, or a wrong one added), the relation (dropped or
    wrong), or one of two objects left out. Every such change alters the text, so captions differ at rate `noise`."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise is the probability of a corrupted caption and must lie in [0, 1], got {noise}")
    if rng.random() >= noise:
        return prompt_text(scene.metadata["include"])
    include = copy.deepcopy(scene.metadata["include"])
    related = [requirement for requirement in include if "position" in requirement]
    kinds = ["count", "color"] + ["position"] * bool(related) + ["object"] * (len(include) > 1)
    kind = kinds[rng.integers(len(kinds))]
    index = int(rng.integers(len(include)))
    requirement = include[index]
    if kind == "count":
        options = [n for n in NUMBER_WORDS if n != requirement["count"]] + [None] * (requirement["count"] > 1)
        requirement["count"] = options[rng.integers(len(options))]
    elif kind == "color":
        shown = {obj.color for obj in scene.objects if obj.shape == requirement["class"]}
        wrong = [color for color in COLORS if color not in shown]  # at most 4 objects, so never empty
        if "color" in requirement and rng.random() < 0.5:
            del requirement["color"]
        else:
            requirement["color"] = wrong[rng.integers(len(wrong))]
    elif kind == "position":
        relation, target = related[0]["position"]
        if rng.random() < 0.5:
            del related[0]["position"]
        else:
            others = [other for other in RELATIONS if other != relation]
            related[0]["position"] = [others[rng.integers(len(others))], target]
    else:
        del include[index]
        for remaining in include:
            remaining.pop("position", None)  # the relation lost one of its two objects
    return prompt_text(include)


def sample_captioned_images(rng: np.random.Generator, count: int, noise: float,
                            resolution: int = 32) -> list[CaptionedImage]:
    """Pretraining data: random scenes (tags uniform), rendered, each with a noisy caption."""
    pairs = []
    for _ in range(count):
        scene = sample_scene(rng)
        pairs.append(CaptionedImage(render(scene, resolution), noisy_caption(scene, rng, noise), scene.metadata))
    return pairs


def _rows(records: list[dict[str, Any]], count: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """`count` rows cycling through `records` in a random order, so every tag gets the same number of rows."""
    return [copy.deepcopy(records[i]) for i in np.resize(rng.permutation(len(records)), count)]


def split_prompts(seed: int = 0) -> PromptSplit:
    """Train and held-out test prompts. Per tag, a third of the canonical forms (at most MAX_TEST_FORMS) are held
    out, so no test prompt, nor any rewording of one, is in train. Rows are balanced over the six tags; tags with
    few distinct prompts (single_object has three) repeat them, which weights tags equally as GenEval's mean does."""
    rng = np.random.default_rng(seed)
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for tag in TAGS:
        records = all_records(tag)
        forms = sorted({canonical_form(record) for record in records})
        held_out = [forms[i] for i in rng.permutation(len(forms))[: max(1, min(round(len(forms) / 3), MAX_TEST_FORMS))]]
        test += _rows([record for record in records if canonical_form(record) in held_out], TEST_ROWS_PER_TAG, rng)
        train += _rows([record for record in records if canonical_form(record) not in held_out],
                       TRAIN_ROWS_PER_TAG, rng)
    return PromptSplit(train=[train[i] for i in rng.permutation(len(train))],
                       test=[test[i] for i in rng.permutation(len(test))])


def write_prompt_sets(out: Path, seed: int = 0) -> PromptSplit:
    split = split_prompts(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("shapes_train.jsonl", split.train), ("shapes_test.jsonl", split.test)):
        (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the shapes world's train/test prompt sets (GenEval jsonl).")
    parser.add_argument("--out", type=Path, default=Path("configs/prompts"), help="directory of the two .jsonl files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice and the row order")
    args = parser.parse_args(argv)
    split = write_prompt_sets(args.out, args.seed)
    distinct = lambda rows: len({row["prompt"] for row in rows})
    print(f"wrote {len(split.train)} train rows ({distinct(split.train)} distinct prompts) and {len(split.test)} "
          f"test rows ({distinct(split.test)} distinct) to {args.out}")


if __name__ == "__main__":
    main()
