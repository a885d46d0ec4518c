"""Experiment trackers: stable names for every metrics.jsonl scalar, and a 2-update run that writes TensorBoard
event files and an offline wandb run holding the same scalars as metrics.jsonl."""

import json

import pytest

from configs.load import load_config
from deploy.trackers import Trackers, scalars


def test_records_map_to_stable_names():
    update = {"kind": "update", "step": 3, "version": 3, "elapsed_s": 9.5, "reward": 0.5, "loss": 0.1,
              "grad_norm": 2.0, "policy_lag": 0, "collect_s": 1.5, "images_per_s": 10.0, "stale_groups": 0,
              "train_scores": {"shapes": 0.7, "shapes_strict": 0.3}, "failures": ["x"], "skipped": True}
    assert scalars(update) == {"train/reward": 0.5, "train/loss": 0.1, "train/grad_norm": 2.0,
                               "train/policy_lag": 0.0, "system/elapsed_s": 9.5, "system/collect_s": 1.5,
                               "system/images_per_s": 10.0, "system/stale_groups": 0.0,
                               "reward/shapes": 0.7, "reward/shapes_strict": 0.3}
    evaluation = {"kind": "eval", "step": 5, "set": "held-out", "means": {"shapes_strict": 0.4},
                  "intervals": {"shapes_strict": 0.03}, "per_tag": {"counting": {"shapes_strict": 0.2}}}
    assert scalars(evaluation) == {"eval/held-out/shapes_strict": 0.4, "eval/held-out/shapes_strict_interval95": 0.03,
                                   "eval/held-out/counting/shapes_strict": 0.2}
    assert scalars({"kind": "final", "step": 5}) == {}


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"run.trackers \['mlflow'\]: choose from \['tensorboard', 'wandb'\]"):
        Trackers(["mlflow"], tmp_path, "run", {}, "")


@pytest.mark.slow
def test_run_logs_to_tensorboard_and_offline_wandb(local_ray, tiny_pipeline, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from deploy.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config("configs/tiny_cpu.yaml", [
        f"policy.pretrained={tiny_pipeline}", f"run.output_dir={tmp_path}", "run.name=tracked",
        "run.trackers=[tensorboard, wandb]", "prompts.group_size=4", "schedule.groups_per_update=2",
        "learner.micro_batch_size=4", "sampler.num_steps=4", "sampler.num_actors=1", "sampler.groups_per_call=1",
        "eval.num_steps=4", "eval.num_prompts=2", "eval.images_per_prompt=1",
        "eval.in_distribution_images_per_prompt=1", "run.grid_every=1", "run.progress=false", "run.num_updates=2",
        "policy.lora.rank=4", "policy.lora.alpha=8"])
    train(cfg)
    run_dir = tmp_path / "tracked"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "update"]
    held_out = [r for r in records if r["kind"] == "eval" and r["set"] == "held-out"]

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for key in ("loss", "reward", "grad_norm"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key])) for r in updates]
    logged = [(e.step, e.value) for e in events.Scalars("eval/held-out/shapes_strict")]
    assert logged == [(r["step"], pytest.approx(r["means"]["shapes_strict"])) for r in held_out]
    assert {"train", "eval_held-out", "before_after_held-out"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("train")] == [1, 2]  # grids/train_00001.png at step 1, ...

    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    history = wandb_history(next(offline[0].glob("run-*.wandb")))
    for record in [*updates, *held_out]:
        for key, value in scalars(record).items():
            assert history[record["step"]][key] == pytest.approx(value), (record["step"], key)
    checkpoint = json.loads((run_dir / "checkpoints" / "step_00002" / "state.json").read_text())
    assert offline[0].name.endswith(checkpoint["trackers"]["wandb"])  # a resumed run continues this wandb run


def wandb_history(path) -> dict[int, dict[str, float]]:
    """The history rows of an offline wandb run file, read as wandb writes it: a 7-byte header, then LevelDB-style
    log records (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last) in 32 KiB blocks, each a
    protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, rows = path.read_bytes(), 32768, 7, b"", {}
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        if record.WhichOneof("record_type") == "history":
            row = rows.setdefault(record.history.step.num, {})
            for item in record.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows
