"""Training prompts in GenEval's format for the `sd3_geneval` preset, with every meaning of the test set left out.

`python -m configs.geneval_prompts [--out configs/prompts] [--per-tag 1000] [--seed 0]` writes
`geneval_train.jsonl`: GenEval's six tasks with its own templates, its 80 COCO class names and 10 colours —
single object ("a photo of a bench"), two objects ("a photo of a bench and a cow"), counting 2–4 ("a photo of
three benchs", excluding one more), colours ("a photo of a red bench"), position with its four relations ("a photo
of a cow left of a bench") and colour attribution ("a photo of a red bench and a blue cow"). Articles and plurals
follow the test set's own spelling rules (a/an by first letter; plural + "es" after a final "s", else + "s"; the
already plural "skis" and "scissors" stay as they are). A row whose meaning (task, objects, counts, colours,
relation; "a and b" means "b and a", "a left of b" means "b right of a") appears in `geneval_test.jsonl` is never
written, so evaluation measures prompts RL was not trained on. The test set holds all 80 single objects, so the
training set has none: its other tasks still teach each object by name.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CLASSES = (
    "airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed", "bench", "bicycle",
    "bird", "boat", "book", "bottle", "bowl", "broccoli", "bus", "cake", "car", "carrot", "cat", "cell phone", "chair",
    "clock", "computer keyboard", "computer mouse", "couch", "cow", "cup", "dining table", "dog", "donut", "elephant",
    "fire hydrant", "fork", "frisbee", "giraffe", "hair drier", "handbag", "horse", "hot dog", "kite", "knife",
    "laptop", "microwave", "motorcycle", "orange", "oven", "parking meter", "person", "pizza", "potted plant",
    "refrigerator", "sandwich", "scissors", "sheep", "sink", "skateboard", "skis", "snowboard", "spoon",
    "sports ball", "stop sign", "suitcase", "surfboard", "teddy bear", "tennis racket", "tie", "toaster", "toilet",
    "toothbrush", "traffic light", "train", "truck", "tv", "tv remote", "umbrella", "vase", "wine glass", "zebra")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
ALREADY_PLURAL = ("skis", "scissors")


def article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def plural(name: str) -> str:
    if name in ALREADY_PLURAL:
        return name
    return name + ("es" if name.endswith("s") else "s")


INVERSE = {"right of": "left of", "below": "above"}


def meaning(row: dict) -> str:
    """What a row asks for, independent of its wording and of the order it names two objects in."""
    include = [dict(item) for item in row["include"]]
    if row["tag"] == "position":  # "b right of a" is "a left of b"
        anchor, placed = include
        relation = placed.pop("position")[0]
        if relation in INVERSE:
            anchor, placed, relation = placed, anchor, INVERSE[relation]
        include = [anchor, {**placed, "position": [relation, 0]}]
    elif row["tag"] in ("two_object", "color_attr"):
        include.sort(key=lambda item: json.dumps(item, sort_keys=True))
    return json.dumps({"tag": row["tag"], "include": include, "exclude": row.get("exclude", [])}, sort_keys=True)


def sample_row(tag: str, rng: random.Random) -> dict:
    a, b = rng.sample(CLASSES, 2)
    if tag == "single_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {article(a)}"}
    if tag == "two_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {article(a)} and {article(b)}"}
    if tag == "counting":
        n = rng.choice(sorted(NUMBERS))
        return {"tag": tag, "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
                "prompt": f"a photo of {NUMBERS[n]} {plural(a)}"}
    if tag == "colors":
        color = rng.choice(COLORS)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": color}],
                "prompt": f"a photo of {article(color + ' ' + a)}"}
    if tag == "position":
        relation = rng.choice(RELATIONS)
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [relation, 0]}],
                "prompt": f"a photo of {article(b)} {relation} {article(a)}"}
    if tag == "color_attr":
        c1, c2 = rng.sample(COLORS, 2)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
                "prompt": f"a photo of {article(c1 + ' ' + a)} and {article(c2 + ' ' + b)}"}
    raise ValueError(f"unknown GenEval task {tag!r}; choose one of {TAGS}")


def generate(test_rows: list[dict], *, per_tag: int, seed: int) -> list[dict]:
    """Up to `per_tag` rows of distinct meaning per task, none with a meaning of `test_rows`, shuffled
    deterministically. A task with fewer meanings left than `per_tag` (single objects: none; counting: 160) gives
    every one it has; the sampler is tried long enough to find all of them."""
    rng, excluded, rows = random.Random(seed), {meaning(r) for r in test_rows}, []
    for tag in TAGS:
        seen: set[str] = set()
        for _ in range(50 * per_tag):
            if len(seen) == per_tag:
                break
            row = sample_row(tag, rng)
            key = meaning(row)
            if key not in excluded and key not in seen:
                seen.add(key)
                rows.append(row)
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="configs/prompts", help="folder holding geneval_test.jsonl")
    parser.add_argument("--per-tag", type=int, default=1000, help="rows per GenEval task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    test_rows = [json.loads(line) for line in (out / "geneval_test.jsonl").read_text().splitlines() if line]
    rows = generate(test_rows, per_tag=args.per_tag, seed=args.seed)
    (out / "geneval_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out / 'geneval_train.jsonl'}")


if __name__ == "__main__":
    main()
