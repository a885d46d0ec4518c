"""`make run`'s recipe still learns: seed 0 of the short run (bench.learning_reference.SHORT: the first 35 updates)
against tests/reference/learning_short.json, which holds what `make reproduce`'s 3 seeds measured at that update."""

import json

import pytest

from bench.learning_reference import REFERENCE, run_short

# 35 updates with two evaluations, about 3 min on a quiet 2-core machine; a loaded one has taken 3× as long.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_short_run_learns_as_the_reference_did(local_ray, tmp_path):
    reference = json.loads(REFERENCE.read_text())
    got = run_short(0, str(tmp_path))
    print("\nshort run, seed 0:", json.dumps(got, indent=1), "\nreference seed 0:", reference["seeds"]["0"])
    assert got["in-distribution/lift"] >= reference["min_in_distribution_lift"] > 0, got
    assert got["held-out/after"] >= got["held-out/before"] - reference["max_held_out_drop"], got
    assert got["reward/last10"] > got["reward/first10"], got
