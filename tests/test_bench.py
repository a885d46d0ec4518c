"""Smoke of the `make bench` harness: `--quick` on the two cheapest measurements writes results.json with the
documented schema and results.md with the targets table. It checks the harness, never the figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.paired import Spread, alternate, ratios, target


def test_alternate_rotates_the_order_and_pairs_rounds():
    calls = []
    values = alternate({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert values == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert ratios(values["b"], values["a"]) == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="as many rounds"):
        ratios([1.0], [1.0, 2.0])


def test_spread_and_target():
    s = Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert target("x", 1.2, 1.45, at_most=True)["met"] and not target("y", 1.2, 1.7, at_most=False)["met"]


def test_quick_run_writes_the_schema(tiny_pipeline, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--only", "buffer,learner", "--out", str(out),
                           "--policy", tiny_pipeline], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["date"]
    assert {"cpus", "torch", "device", "gpu"} <= results["machine"].keys()
    assert set(results["measurements"]) == {"buffer", "learner"}
    for name, m in results["measurements"].items():
        assert {"what", "config", "figures", "rows", "targets", "notes", "date", "seconds"} <= m.keys(), name
        for t in m["targets"]:
            assert {"name", "value", "limit", "at_most", "unit", "met"} <= t.keys()
    figures = results["measurements"]["learner"]["figures"]
    assert {"median", "q1", "q3", "n"} <= figures["nft_over_fm_kl_off"].keys()
    assert results["measurements"]["buffer"]["figures"]["x0_over_trajectory"] < 0.5
    markdown = (out / "results.md").read_text()
    assert "## Targets" in markdown and "Quick (smoke) run" in markdown


def test_every_missed_target_says_why():
    """A missed target's row says what prevents it here and what a GPU node needs; a target without that line fails."""
    from bench.report import target_rows
    committed = json.loads((Path(__file__).parents[1] / "bench" / "results.json").read_text())
    rows = target_rows(committed)[2:]
    missed = [row for row in rows if "**no**" in row]
    assert missed and all("GPU" in row.rsplit("|", 2)[1] for row in missed)
    with pytest.raises(KeyError, match="WHY_MISSED"):
        target_rows({"measurements": {"reward": {"targets": [target("a new target", 2.0, 1.0, at_most=True)]}}})


def test_algorithms_compare_interpolates_where_nft_reaches_grpos_final_score():
    from bench.algorithms import compare, first_reach

    nft = {"images": [0, 100, 200], "train_s": [0, 10, 20], "mean": [0.4, 0.6, 0.7]}
    grpo = {"images": [0, 100, 200], "train_s": [0, 20, 40], "mean": [0.4, 0.45, 0.5]}
    assert first_reach(nft, "images", 0.5) == 50 and first_reach(nft, "images", 0.8) is None
    assert first_reach(nft, "images", 0.3) == 0  # already there at the start
    result = compare({"NFT": nft, "Flow-GRPO": grpo})
    assert result["target"] == 0.5 and result["ratio_images"] == 4.0 and result["ratio_train_s"] == 8.0
    flat = compare({"NFT": nft, "Flow-GRPO": {**grpo, "mean": [0.4, 0.45, 0.38]}})
    assert not flat["grpo_improved"] and flat["ratio_images"] is None and flat["nft_final"] == 0.7


def test_algorithms_reads_nft_curves_from_a_reproduce_results_file(tmp_path):
    from bench.algorithms import mean_curve, reproduced_curves

    points = [{"step": s, "images": 64 * s, "train_s": 3.0 * s, "score": 0.4 + s / 100, "interval": 0.03}
              for s in (0, 35)]
    shifted = [{**p, "score": p["score"] + 0.1} for p in points]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"key": "shapes_strict", "seeds": {
        "0": {"in-distribution": {"curve": points}}, "1": {"in-distribution": {"curve": shifted}}}}))
    curves = reproduced_curves(path, [0, 1])
    assert curves == {0: points, 1: shifted}
    c = mean_curve(curves)
    assert c["step"] == [0, 35] and c["min"] == [0.4, 0.75] and abs(c["max"][1] - 0.85) < 1e-12
    with pytest.raises(ValueError, match=r"no run of seed\(s\) \[2\]"):
        reproduced_curves(path, [0, 2])


def test_algorithms_section_is_opt_in_and_its_rows_say_why_there_is_no_ratio():
    from bench.algorithms import compare, rows
    from bench.run import parse

    assert "algorithms" not in parse([]).names and parse(["--only", "algorithms"]).names == ["algorithms"]
    nft = {"step": [0, 35], "images": [0, 2240], "train_s": [0, 200], "mean": [0.4, 0.6], "min": [0.4, 0.55],
           "max": [0.4, 0.65]}
    grpo = {**nft, "mean": [0.4, 0.39], "min": [0.4, 0.37], "max": [0.4, 0.41]}
    table = dict(rows(compare({"NFT": nft, "Flow-GRPO": grpo}), {"NFT": nft, "Flow-GRPO": grpo}))
    assert table["images NFT needs to reach Flow-GRPO's final score"].startswith("no ratio")
    assert "0.400 [0.400–0.400] → 0.600 [0.550–0.650]" in table[
        "NFT: in-distribution shapes_strict at updates 0, 35 (mean [seed range])"]
    better = {**grpo, "mean": [0.4, 0.5]}
    table = dict(rows(compare({"NFT": nft, "Flow-GRPO": better}), {"NFT": nft, "Flow-GRPO": better}))
    assert table["Flow-GRPO images / NFT images to Flow-GRPO's final score"] == "2.0×"
