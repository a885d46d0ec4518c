"""Tests of the `shapes` scorer: ground-truth renders pass, mismatched renders fail, hand-made images, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from actors.shapes_world import all_records, canonical_form, render_metadata
from reward_service.scorers import build_scorer
from reward_service.scorers.shapes import BACKGROUND, COLORS, ShapesScorer, build, detect

TEST_PROMPTS = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "shapes_test.jsonl"


@pytest.fixture(scope="module")
def test_records() -> list[dict]:
    return [json.loads(line) for line in TEST_PROMPTS.read_text().splitlines()]


@pytest.fixture(scope="module")
def scorer() -> ShapesScorer:
    return build()


def score(scorer: ShapesScorer, images: list[np.ndarray], records: list[dict]) -> dict[str, list]:
    return scorer.score(np.stack(images), [record["prompt"] for record in records], records)


def test_ground_truth_renders_of_every_test_prompt_are_strictly_correct(scorer, test_records):
    rng = np.random.default_rng(0)
    images = [render_metadata(record, rng) for record in test_records for _ in range(2)]
    records = [record for record in test_records for _ in range(2)]
    start = time.perf_counter()
    scores = score(scorer, images, records)
    ms_per_image = (time.perf_counter() - start) * 1000 / len(images)
    strict, partial = np.mean(scores["shapes_strict"]), np.mean(scores["shapes"])
    print(f"\nground-truth renders at 32x32: strict {strict:.3f}, partial {partial:.3f} over {len(images)} images, "
          f"{ms_per_image:.2f} ms/image")
    assert strict >= 0.99
    assert ms_per_image < 10


def test_renders_of_a_different_prompt_of_the_same_tag_score_low(scorer, test_records):
    rng = np.random.default_rng(1)
    images, records = [], []
    for record in test_records:
        # a prompt of the same tag that accepts different images ('a B right of a A' would accept the same ones)
        others = [other for other in all_records(record["tag"]) if canonical_form(other) != canonical_form(record)]
        images.append(render_metadata(others[rng.integers(len(others))], rng))
        records.append(record)
    scores = score(scorer, images, records)
    strict, partial = np.mean(scores["shapes_strict"]), np.mean(scores["shapes"])
    print(f"\nmismatched renders: strict {strict:.3f}, partial {partial:.3f} over {len(images)} images")
    assert strict <= 0.02
    assert partial <= 0.5


def test_ground_truth_renders_at_64_pixels_are_detected_too(scorer, test_records):
    rng = np.random.default_rng(2)
    records = test_records[::4]
    scores = score(scorer, [render_metadata(record, rng, resolution=64) for record in records], records)
    assert np.mean(scores["shapes_strict"]) >= 0.99


def blank(size: int = 32) -> np.ndarray:
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    return image


def draw(image: np.ndarray, shape: str, color: str, x: int, y: int, side: int) -> np.ndarray:
    """Hard-edged shape with its box's top-left pixel at (x, y), as a hand-made test image."""
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    half = side / 2
    mask = {"square": np.ones((side, side), dtype=bool),
            "circle": (xs - half) ** 2 + (ys - half) ** 2 <= half**2,
            "triangle": np.abs(xs - half) <= ys / 2}[shape]
    image[y:y + side, x:x + side][mask] = COLORS[color]
    return image


def record(*include: dict, exclude: list[dict] | None = None) -> dict:
    return {"tag": "hand", "include": list(include), **({"exclude": exclude} if exclude else {}), "prompt": "hand"}


HAND_MADE = {
    # id: (image, metadata, expected partial, expected strict)
    "red-square": (draw(blank(), "square", "red", 4, 4, 9), record({"class": "square", "count": 1, "color": "red"}),
                   1.0, 1.0),
    "blue-circle-asked-red": (draw(blank(), "circle", "blue", 10, 10, 10),
                              record({"class": "circle", "count": 1, "color": "red"}), 0.5, 0.0),
    "triangle-not-circle": (draw(blank(), "triangle", "white", 10, 10, 10), record({"class": "circle", "count": 1}),
                            0.0, 0.0),
    "two-of-three-circles": (draw(draw(blank(), "circle", "green", 2, 2, 8), "circle", "yellow", 20, 20, 8),
                             record({"class": "circle", "count": 3}, exclude=[{"class": "circle", "count": 4}]),
                             1 - 1 / 3, 0.0),
    "three-circles-exact": (draw(draw(draw(blank(), "circle", "green", 2, 2, 8), "circle", "red", 20, 2, 8),
                                 "circle", "white", 11, 20, 8),
                            record({"class": "circle", "count": 3}, exclude=[{"class": "circle", "count": 4}]),
                            1.0, 1.0),
    "square-left-of-triangle": (draw(draw(blank(), "square", "yellow", 2, 12, 8), "triangle", "blue", 20, 12, 8),
                                record({"class": "triangle", "count": 1},
                                       {"class": "square", "count": 1, "position": ["left of", 0]}), 1.0, 1.0),
    "square-asked-right-of-triangle": (draw(draw(blank(), "square", "yellow", 2, 12, 8), "triangle", "blue", 20, 12, 8),
                                       record({"class": "triangle", "count": 1},
                                              {"class": "square", "count": 1, "position": ["right of", 0]}),
                                       2 / 3, 0.0),
    "circle-above-square": (draw(draw(blank(), "circle", "red", 12, 2, 8), "square", "green", 12, 20, 8),
                            record({"class": "square", "count": 1},
                                   {"class": "circle", "count": 1, "position": ["above", 0]}), 1.0, 1.0),
    "noise-speck-ignored": (draw(draw(blank(), "square", "white", 10, 10, 9), "square", "red", 28, 2, 2),
                            record({"class": "square", "count": 1}), 1.0, 1.0),
    "empty-image": (blank(), record({"class": "square", "count": 1, "color": "white"}), 0.0, 0.0),
    "five-circles-asked-two": (
        draw(draw(draw(draw(draw(blank(), "circle", "red", 1, 1, 7), "circle", "red", 12, 1, 7), "circle", "red",
                            23, 1, 7), "circle", "red", 1, 20, 7), "circle", "red", 20, 20, 7),
        record({"class": "circle", "count": 2}, exclude=[{"class": "circle", "count": 3}]), 0.0, 0.0),
}


@pytest.mark.parametrize("image, metadata, partial, strict", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_hand_made_images_score_as_computed_by_hand(scorer, image, metadata, partial, strict):
    scores = scorer.score(image[None], ["hand"], [metadata])
    assert scores["shapes"] == [pytest.approx(partial)]
    assert scores["shapes_strict"] == [strict]


def test_detect_reports_shape_colour_and_box():
    (found,) = detect(draw(blank(), "triangle", "yellow", 5, 7, 10)[None])  # the apex row holds no pixel centre
    assert [(obj.shape, obj.color, obj.box) for obj in found] == [("triangle", "yellow", (5, 8, 15, 17))]


def test_build_scorer_finds_the_shapes_scorer_and_parses_string_options():
    scorer = build_scorer("shapes", color_threshold="70", position_margin="0.1")
    assert isinstance(scorer, ShapesScorer) and scorer.name == "shapes" and scorer.color_threshold == 70.0


def test_shapes_strict_trains_on_the_strict_score_and_reports_both(test_records):
    from reward_service.scorers.shapes_strict import ShapesStrictScorer

    strict_scorer = build_scorer("shapes_strict", position_margin="0.1")
    assert isinstance(strict_scorer, ShapesStrictScorer) and strict_scorer.name == "shapes_strict"
    assert strict_scorer.position_margin == 0.1
    rng = np.random.default_rng(2)
    records = test_records[:12]
    images = [render_metadata(records[(i + 1) % 12] if i % 2 else record, rng) for i, record in enumerate(records)]
    ours, plain = score(strict_scorer, images, records), score(ShapesScorer(position_margin=0.1), images, records)
    assert ours == plain  # same detector and verdicts; only the name (the training key) differs
    assert set(ours["shapes_strict"]) == {0.0, 1.0} and ours["shapes"] != ours["shapes_strict"]
    with pytest.raises(ValueError, match="unknown shapes scorer option"):
        build_scorer("shapes_strict", margin="1")


GOOD = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
        "prompt": "a photo of a red circle"}
BAD_INPUT = {
    "float-images": (np.zeros((1, 32, 32, 3), np.float32), ["p"], [GOOD], "uint8 array of shape"),
    "no-batch-axis": (np.zeros((32, 32, 3), np.uint8), ["p"], [GOOD], "uint8 array of shape"),
    "four-channels": (np.zeros((1, 32, 32, 4), np.uint8), ["p"], [GOOD], "uint8 array of shape"),
    "list-not-array": ([[0]], ["p"], [GOOD], "uint8 array of shape"),
    "too-few-prompts": (np.zeros((2, 32, 32, 3), np.uint8), ["p"], [GOOD, GOOD], "one prompt and one metadata"),
    "too-few-metadata": (np.zeros((2, 32, 32, 3), np.uint8), ["p", "q"], [GOOD], "one prompt and one metadata"),
    "metadata-not-dict": (np.zeros((1, 32, 32, 3), np.uint8), ["p"], ["a red circle"], "must be a dict"),
    "missing-include": (np.zeros((1, 32, 32, 3), np.uint8), ["p"], [{"prompt": "p"}], "'include'"),
    "coco-class": (np.zeros((1, 32, 32, 3), np.uint8), ["p"], [{"include": [{"class": "dog", "count": 1}]}],
                   "knows circle, square, triangle"),
    "unknown-colour": (np.zeros((1, 32, 32, 3), np.uint8), ["p"],
                       [{"include": [{"class": "circle", "count": 1, "color": "orange"}]}], "'orange'"),
    "zero-count": (np.zeros((1, 32, 32, 3), np.uint8), ["p"], [{"include": [{"class": "circle", "count": 0}]}],
                   "positive int"),
    "position-forward-reference": (np.zeros((1, 32, 32, 3), np.uint8), ["p"],
                                   [{"include": [{"class": "circle", "count": 1, "position": ["above", 0]}]}],
                                   "earlier include requirement"),
    "unknown-relation": (np.zeros((1, 32, 32, 3), np.uint8), ["p"],
                         [{"include": [{"class": "circle", "count": 1},
                                       {"class": "square", "count": 1, "position": ["near", 0]}]}], "relation in"),
    "position-in-exclude": (np.zeros((1, 32, 32, 3), np.uint8), ["p"],
                            [{"include": [{"class": "circle", "count": 1}],
                              "exclude": [{"class": "circle", "count": 2, "position": ["above", 0]}]}],
                            "'include' requirements only"),
}


@pytest.mark.parametrize("images, prompts, metadata, message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_raises_value_error_naming_the_problem(scorer, images, prompts, metadata, message):
    with pytest.raises(ValueError, match=message):
        scorer.score(images, prompts, metadata)


@pytest.mark.parametrize("options, message", [
    ({"threshold": "80"}, "unknown shapes scorer option"),
    ({"color_threshold": "high"}, "must be numbers"),
    ({"color_threshold": "-1"}, "out of range"),
], ids=["unknown-option", "not-a-number", "negative-threshold"])
def test_bad_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        build(**options)


def test_metadata_needs_only_include_and_exclude(scorer, test_records):
    stripped = [{key: value for key, value in record.items() if key in ("include", "exclude")}
                for record in test_records[:12]]
    images = [render_metadata(record, np.random.default_rng(i)) for i, record in enumerate(stripped)]
    assert scorer.score(np.stack(images), [""] * 12, stripped)["shapes_strict"] == [1.0] * 12
