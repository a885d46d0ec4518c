"""`make run`'s recipe still learns: a short run (bench.learning_reference.SHORT) of seed 0 against the committed
reference tests/reference/learning_short.json, measured over 3 seeds with `python -m bench.learning_reference`."""

import json

import pytest

from bench.learning_reference import REFERENCE, run_short

pytestmark = pytest.mark.slow


def test_short_run_learns_as_the_reference_did(local_ray, tmp_path):
    reference = json.loads(REFERENCE.read_text())
    got = run_short(0, str(tmp_path))
    print("\nshort run, seed 0:", json.dumps(got, indent=1))
    assert got["in-distribution/lift"] >= reference["min_in_distribution_lift"], got
    assert abs(got["in-distribution/after"] - reference["in_distribution_after"]) <= reference["after_tolerance"], got
    assert got["held-out/after"] >= got["held-out/before"] - reference["max_held_out_drop"], got
    assert got["reward/last10"] > got["reward/first10"], got
