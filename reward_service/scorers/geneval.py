"""GenEval reward: Mask2Former (Swin-S, COCO instances) finds the objects, CLIP names their colours, and
the prompt's GenEval metadata (counts, colours, positions) is checked. `geneval` is the dense partial score used for
training, `geneval_strict` GenEval's own 0/1 verdict (reported). The reference runs the same detector in mmdetection.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from reward_service.scorers import Scores
from reward_service.scorers.clipscore import default_device

DETECTOR = "facebook/mask2former-swin-small-coco-instance"
CLIP = "openai/clip-vit-large-patch14"
THRESHOLD = 0.3  # detection confidence an object needs
COUNTING_THRESHOLD = 0.9  # stricter for "counting" prompts, where a spurious detection changes the answer
MAX_OBJECTS = 16  # per class, most confident first
POSITION_MARGIN = 0.1  # share of both objects' sizes an offset must exceed to count as a direction
RELATIONS = ("left of", "right of", "above", "below")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {color} {name}", "a photo of a {color}-colored {name}", "a photo of a {color} object")
CROP_BACKGROUND = (153, 153, 153)  # GenEval's "#999": outside the object's mask, so CLIP sees only the object
# COCO classes the detector's labels spell differently from GenEval's prompts.
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
    score: float
    mask: np.ndarray | None = None  # (H, W) bool
    color: str | None = None  # CLIP's colour, set only on the objects a colour requirement looks at


Found = dict[str, list[Detection]]  # GenEval class name -> its detections above threshold, most confident first


def relations(a: Detection, b: Detection) -> set[str]:
    """Where `a` lies relative to `b`: the centroid offset, shrunk per axis by POSITION_MARGIN × both sizes, read as
    directions; "left of"/"right of" when the shrunk offset's x is over half the offset's length, likewise y."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
    offset = np.array([(ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2])
    sizes = np.array([ax1 - ax0 + bx1 - bx0, ay1 - ay0 + by1 - by0])
    shrunk = np.sign(offset) * np.maximum(np.abs(offset) - POSITION_MARGIN * sizes, 0)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    found = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {name for name, holds in found.items() if holds}


def _in_relation(objects: list[Detection], position: list[Any], groups: list[list[Detection] | None]) -> bool:
    relation, target = position
    return groups[target] is not None and all(relation in relations(o, t) for o in objects for t in groups[target])


def strict_correct(metadata: dict[str, Any], found: Found) -> bool:
    """GenEval's verdict. Every include clause has ≥ count objects whose `count` most confident ones have its colour
    and stand in its relation to every object of its target clause (which must itself hold); no exclude clause has
    ≥ its count objects."""
    groups: list[list[Detection] | None] = []  # per include clause: its objects when it holds
    correct = True
    for clause in metadata["include"]:
        objects = found.get(clause["class"], [])[: clause["count"]]
        holds = len(objects) == clause["count"]
        if holds and "color" in clause:
            holds = sum(o.color == clause["color"] for o in objects) == clause["count"]
        if holds and "position" in clause:
            holds = _in_relation(objects, clause["position"], groups)
        groups.append(objects if holds else None)
        correct = correct and holds
    return correct and all(len(found.get(c["class"], [])) < c["count"] for c in metadata.get("exclude", []))


def partial_score(metadata: dict[str, Any], found: Found) -> float:
    """The reference's dense score: the mean of per-clause terms, with n detections of a clause wanting n*:
    count 1 − |n − n*|/n* (below 0 past 2n*, as in the reference); when n ≠ n*, one 0 for its colour/position
    requirements; else colour = share of the n* objects with the colour, position = 1 if every object stands in the
    relation to every object of the target clause (which must have matched), else 0. One departure: a failed
    position check adds a single 0 (the reward-server code we read appended a 1 after it as well)."""
    terms: list[float] = []
    groups: list[list[Detection] | None] = []  # per include clause: its objects when count (and colour) matched
    for clause in metadata["include"]:
        objects, wanted = found.get(clause["class"], []), clause["count"]
        terms.append(1 - abs(len(objects) - wanted) / wanted)
        matched = len(objects) == wanted
        if not matched and ("color" in clause or "position" in clause):
            terms.append(0.0)
        if matched and "color" in clause:
            hits = sum(o.color == clause["color"] for o in objects)
            terms.append(hits / wanted)
            matched = hits == wanted
        if "position" in clause and len(objects) == wanted:
            matched = matched and _in_relation(objects, clause["position"], groups)
            terms.append(float(matched))
        groups.append(objects if matched else None)
    return sum(terms) / len(terms)


def object_crop(image: np.ndarray, detection: Detection) -> Image.Image:
    """The object's box, with everything outside its mask painted CROP_BACKGROUND."""
    pixels = image
    if detection.mask is not None:
        pixels = np.where(detection.mask[..., None], image, np.array(CROP_BACKGROUND, dtype=np.uint8))
    return Image.fromarray(pixels).crop(tuple(round(v) for v in detection.box))


def check_metadata(metadata: dict[str, Any], labels: set[str]) -> None:
    """GenEval metadata as in the geneval dataset's jsonl; raises ValueError naming what is wrong."""
    clauses = metadata.get("include")
    if not clauses or "tag" not in metadata:
        raise ValueError(f"geneval needs GenEval metadata with 'tag' and a non-empty 'include' list, got {metadata}")
    for index, clause in enumerate([*clauses, *metadata.get("exclude", [])]):
        if clause.get("class") not in labels or not isinstance(clause.get("count"), int) or clause["count"] < 1:
            raise ValueError(f"geneval clause {clause} needs a 'class' the detector knows and a 'count' >= 1")
        if clause.get("color", COLORS[0]) not in COLORS:
            raise ValueError(f"geneval colour {clause['color']!r} is not one of {COLORS}")
        position = clause.get("position")
        if position is not None and not (position[0] in RELATIONS and isinstance(position[1], int)
                                         and 0 <= position[1] < index):
            raise ValueError(f"geneval position {position} must be [one of {RELATIONS}, index of an earlier include "
                             "clause]")


class GenevalScorer:
    name = "geneval"

    def __init__(self, detector: str, clip: str, device: str) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, Mask2FormerForUniversalSegmentation

        self.device = device
        self.detector = Mask2FormerForUniversalSegmentation.from_pretrained(detector).eval().to(device)
        # PIL backends: the preprocessing the checkpoints were converted with, whether or not torchvision is here.
        self.detector_processor = AutoImageProcessor.from_pretrained(detector, backend="pil")
        self.labels = {int(i): GENEVAL_NAMES.get(name, name) for i, name in self.detector.config.id2label.items()}
        self.clip = CLIPModel.from_pretrained(clip).eval().to(device)
        self.clip_tokenizer = AutoTokenizer.from_pretrained(clip)
        self.clip_processor = AutoImageProcessor.from_pretrained(clip, backend="pil")
        self.color_classifiers: dict[str, Any] = {}  # class name -> (colours, D) text embeddings

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        for entry in metadata:
            check_metadata(entry, set(self.labels.values()))
        partial, strict = [], []
        for image, detections, entry in zip(images, self.detect(images, THRESHOLD), metadata, strict=True):
            found = self.colored(image, self.found(detections, entry), entry)
            partial.append(partial_score(entry, found))
            strict.append(float(strict_correct(entry, found)))
        return {"geneval": partial, "geneval_strict": strict}

    def detect(self, images: np.ndarray, threshold: float) -> list[list[tuple[str, Detection]]]:
        """Instances per image scoring ≥ threshold: (GenEval class name, box from its mask, score, mask)."""
        import torch

        inputs = self.detector_processor(images=list(images), return_tensors="pt")
        with torch.no_grad():
            outputs = self.detector(**{key: value.to(self.device) for key, value in inputs.items()})
        results = self.detector_processor.post_process_instance_segmentation(
            outputs, threshold=threshold, target_sizes=[images.shape[1:3]] * len(images), return_binary_maps=True)
        per_image = []
        for result in results:
            # With no instance the post-processing returns an (H, W) map of -1 instead of a (0, H, W) stack.
            masks = result["segmentation"].cpu().numpy() > 0.5 if result["segments_info"] else []  # (K, H, W)
            detections = []
            for info, mask in zip(result["segments_info"], masks, strict=True):
                rows, cols = np.nonzero(mask)
                box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
                detections.append((self.labels[info["label_id"]], Detection(box, info["score"], mask)))
            per_image.append(detections)
        return per_image

    @staticmethod
    def found(detections: list[tuple[str, Detection]], metadata: dict[str, Any]) -> Found:
        """Per class the detections above the tag's threshold, most confident first, at most MAX_OBJECTS."""
        threshold = COUNTING_THRESHOLD if metadata["tag"] == "counting" else THRESHOLD
        found: Found = {}
        for name, detection in sorted(detections, key=lambda item: -item[1].score):
            if detection.score > threshold and len(found.setdefault(name, [])) < MAX_OBJECTS:
                found[name].append(detection)
        return found

    def colored(self, image: np.ndarray, found: Found, metadata: dict[str, Any]) -> Found:
        """`found` with CLIP's colour set on the `count` most confident objects of each clause asking a colour."""
        for clause in metadata["include"]:
            name = clause["class"]
            if "color" in clause and found.get(name):
                objects, rest = found[name][: clause["count"]], found[name][clause["count"]:]
                colors = self.classify_colors([object_crop(image, o) for o in objects], name)
                found[name] = [replace(o, color=c) for o, c in zip(objects, colors, strict=True)] + rest
        return found

    def classify_colors(self, crops: list[Image.Image], name: str) -> list[str]:
        """Zero-shot: the colour whose prompts (averaged over COLOR_TEMPLATES) are nearest each crop in CLIP space."""
        import torch

        with torch.no_grad():
            if name not in self.color_classifiers:
                texts = [t.format(color=c, name=name) for c in COLORS for t in COLOR_TEMPLATES]
                tokens = self.clip_tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
                text = self.clip.text_projection(self.clip.text_model(**tokens).pooler_output)
                text = (text / text.norm(dim=-1, keepdim=True)).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
                self.color_classifiers[name] = text / text.norm(dim=-1, keepdim=True)  # (colours, D)
            pixels = self.clip_processor(images=crops, return_tensors="pt").pixel_values.to(self.device)
            image = self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)
            nearest = (image / image.norm(dim=-1, keepdim=True) @ self.color_classifiers[name].T).argmax(-1)
        return [COLORS[i] for i in nearest.tolist()]


def build(**options: str) -> GenevalScorer:
    """Options (strings, RewardConfig.scorer_args): detector (Mask2Former instance-segmentation checkpoint), clip (CLIP
    checkpoint for colours), each a hub id or local dir; device."""
    unknown = sorted(set(options) - {"detector", "clip", "device"})
    if unknown:
        raise ValueError(f"geneval has no options {unknown}; it takes detector, clip, device")
    return GenevalScorer(detector=options.get("detector", DETECTOR), clip=options.get("clip", CLIP),
                         device=options.get("device") or default_device())
