"""The evaluation protocol: two sets (in-distribution, held-out), seeds training never draws, held-out meanings that
neither pretraining nor RL ever sees, and 95% intervals computed as documented."""

import argparse
import json
import math

import numpy as np
import pytest

from actors.evaluation import HELD_OUT, IN_DISTRIBUTION, eval_groups, interval95
from actors.prompts import TRAIN_SEED_LIMIT, PromptSource, read_prompts
from actors.shapes_world import canonical_form
from configs.load import load_config
from deploy.runtime import eval_sets

TRAIN, TEST = "configs/prompts/shapes_train.jsonl", "configs/prompts/shapes_test.jsonl"


def test_tiny_cpu_evaluates_both_sets_with_their_own_sizes():
    cfg = load_config("configs/tiny_cpu.yaml")
    sets = eval_sets(cfg)
    assert list(sets) == [IN_DISTRIBUTION, HELD_OUT]
    train, test = read_prompts(TRAIN), read_prompts(TEST)
    assert [g.prompt for g in sets[IN_DISTRIBUTION]] == [r.prompt for r in train]  # every training row
    assert [g.prompt for g in sets[HELD_OUT]] == [r.prompt for r in test]
    assert {len(g.seeds) for g in sets[IN_DISTRIBUTION]} == {cfg.eval.in_distribution_images_per_prompt}
    assert {len(g.seeds) for g in sets[HELD_OUT]} == {cfg.eval.images_per_prompt}
    no_id = load_config("configs/tiny_cpu.yaml", ["eval.in_distribution_images_per_prompt=0"])
    assert list(eval_sets(no_id)) == [HELD_OUT]


def test_evaluation_seeds_are_never_training_seeds():
    cfg = load_config("configs/tiny_cpu.yaml")
    eval_seeds = {s for groups in eval_sets(cfg).values() for g in groups for s in g.seeds}
    assert min(eval_seeds) >= TRAIN_SEED_LIMIT
    source = PromptSource(read_prompts(TRAIN), group_size=cfg.prompts.group_size, seed=cfg.prompts.seed)
    train_seeds = [s for _ in range(5000) for s in source.next_group().seeds]  # > 70 runs' worth of make run
    assert max(train_seeds) < TRAIN_SEED_LIMIT
    assert not set(train_seeds) & eval_seeds


def test_rows_get_distinct_seeds_and_sizes_are_checked():
    groups = eval_groups(read_prompts(TEST)[:3], images_per_prompt=4)
    seeds = [s for g in groups for s in g.seeds]
    assert len(set(seeds)) == 12 and groups[1].seeds[0] == TRAIN_SEED_LIMIT + 1000
    assert len(eval_groups(read_prompts(TEST), images_per_prompt=1, num_prompts=5)) == 5
    with pytest.raises(ValueError, match="images_per_prompt 1001"):
        eval_groups(read_prompts(TEST), images_per_prompt=1001)


def test_held_out_meanings_reach_neither_rl_nor_pretraining():
    from deploy.pretrain import make_dataset

    train, test = read_prompts(TRAIN), read_prompts(TEST)
    held_out = {canonical_form(r.metadata) for r in test}
    assert not held_out & {canonical_form(r.metadata) for r in train}  # RL's prompts
    args = argparse.Namespace(test_prompts=TEST, seed=0, dataset_size=3000, noise=0.2, caption_dropout=0.1)
    _, captions = make_dataset(args, resolution=32)
    assert not {r.prompt for r in test} & set(captions)  # pretraining's captions
    pretrain = json.loads(open("configs/policies/tiny_shapes/pretrain.json").read())
    assert pretrain["test_prompts"].endswith("shapes_test.jsonl")  # the committed base left out this very set


def test_interval_is_the_stratified_standard_error():
    by_prompt = {"a": [1.0, 0.0], "b": [1.0, 1.0, 1.0, 0.0]}
    # s_a² = 0.5, s_b² = 0.25; Var = (2·0.5 + 4·0.25) / 6² = 2/36
    assert interval95(by_prompt) == pytest.approx(1.96 * math.sqrt(2 / 36))
    # a prompt with one image takes the pooled within-prompt variance (0.5 + 0.75) / (1 + 3) = 0.3125
    assert interval95({**by_prompt, "c": [1.0]}) == pytest.approx(1.96 * math.sqrt((1 + 1 + 0.3125) / 49))
    assert interval95({"a": [1.0], "b": [0.0]}) == pytest.approx(1.96 * math.sqrt((0.5 + 0.5) / 4))  # no prompt has two
    assert interval95({"a": [1.0, 1.0], "b": [0.0, 0.0]}) == 0.0  # prompts held fixed: no within-prompt spread
    assert math.isnan(interval95({"a": [1.0]}))


def test_interval_covers_the_truth_at_the_stated_rate():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 0.9, 40)  # fixed prompts, each with its own success rate
    hits = 0
    for _ in range(400):
        by_prompt = {str(i): list(rng.random(8) < p[i]) for i in range(40)}
        mean = np.mean([v for vs in by_prompt.values() for v in vs])
        hits += abs(mean - p.mean()) <= interval95({k: [float(x) for x in v] for k, v in by_prompt.items()})
    assert 0.92 <= hits / 400 <= 0.98, hits / 400
