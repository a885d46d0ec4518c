"""Checkpoints of a run: θ, θ_old and the eval EMA as diffusers LoRA folders, plus what a resumed run needs.

`runs/<name>/checkpoints/step_NNNNN/`: theta/, old/, ema/ (each loads with a stock pipeline's `load_lora_weights`),
`training_state.pt` (optimizer, step, RNG states per learner rank and of the driver), `state.json` (update step,
policy version, prompt-source position) and the resolved `config.yaml`.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from actors.prompts import PromptSource
from configs.schema import LoraConfig
from learner.learner_group import LearnerGroup

LORA_FILE = "pytorch_lora_weights.safetensors"  # the file name diffusers writes and looks for
STEP_DIR = re.compile(r"^step_(\d{5,})$")


@dataclass(frozen=True)
class Progress:
    """Where a run stands at a checkpoint: the driver's loop resumes at `step + 1` with θ_old at `version`."""

    step: int
    version: int


def save_lora(directory: Path, weights: dict[str, torch.Tensor], lora: LoraConfig) -> None:
    """Write peft-format LoRA weights as diffusers does for SD3 (`transformer.` keys, adapter config metadata)."""
    from diffusers import StableDiffusion3Pipeline

    # Without the metadata a loader would assume lora_alpha = rank and scale the update wrongly.
    metadata = {"r": lora.rank, "lora_alpha": lora.alpha, "target_modules": list(lora.target_modules)}
    StableDiffusion3Pipeline.save_lora_weights(directory, transformer_lora_layers=weights,
                                               transformer_lora_adapter_metadata=metadata)


def read_lora(source: str | Path) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """A diffusers SD3 LoRA (local folder or hub id) as peft-format transformer weights and the LoraConfig they need.

    Rank and alpha come from the file's adapter metadata when present, else as diffusers infers them
    (rank from the matrices, alpha = rank); target modules from the metadata, else the adapted modules themselves.
    """
    from diffusers import StableDiffusion3Pipeline

    try:
        state, metadata = StableDiffusion3Pipeline.lora_state_dict(str(source), return_lora_metadata=True)
    except Exception as error:  # the hub and diffusers raise many types; all mean "cannot read this LoRA"
        raise ValueError(f"cannot read a diffusers LoRA from {str(source)!r} ({error}); give a folder holding "
                         f"{LORA_FILE} (a checkpoint's theta/) or a hub id of an SD3 LoRA") from error
    others = sorted({key.split(".")[0] for key in state if not key.startswith("transformer.")})
    if others:
        raise ValueError(f"LoRA {str(source)!r} also adapts {others}; only transformer LoRA is supported")
    weights = {key.removeprefix("transformer."): value for key, value in state.items()}
    ranks = {value.shape[0] for key, value in weights.items() if ".lora_A." in key}
    if len(ranks) != 1:
        raise ValueError(f"LoRA {str(source)!r} has ranks {sorted(ranks)}; one rank for every module is supported")
    meta = {key.removeprefix("transformer."): value for key, value in (metadata or {}).items()}
    rank = int(meta.get("r", ranks.pop()))
    targets = meta.get("target_modules") or sorted({key.split(".lora_")[0] for key in weights})
    return weights, LoraConfig(rank=rank, alpha=float(meta.get("lora_alpha", rank)), target_modules=tuple(targets))


def save_checkpoint(root: Path, progress: Progress, *, learner: LearnerGroup, prompts: PromptSource,
                    lora: LoraConfig, config_yaml: str, tracker_ids: dict[str, str] | None = None) -> Path:
    """Write `root/step_NNNNN/`; written under a temporary name first, so a crash never leaves half a checkpoint."""
    final = Path(root) / f"step_{progress.step:05d}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ranks = learner.state()
    for name in ("theta", "old", "ema"):
        save_lora(partial / name, ranks[0].pop(name), lora)
    torch.save({"learner": ranks, "driver_torch_rng": torch.get_rng_state()}, partial / "training_state.pt")
    state = {"step": progress.step, "version": progress.version, "optimizer_step": ranks[0]["step"],
             "prompts": prompts.state(), "saved_at": time.time(), "trackers": tracker_ids or {}}
    (partial / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    (partial / "config.yaml").write_text(config_yaml)
    shutil.rmtree(final, ignore_errors=True)  # a re-run over the same step replaces it
    partial.rename(final)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    steps = [(int(m.group(1)), p) for p in Path(root).glob("step_*")
             if (m := STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return max(steps)[1] if steps else None


def resolve_resume(resume: str, root: Path) -> Path | None:
    """`run.resume`: 'never' -> None; 'auto' -> the latest checkpoint under `root` or None; else that folder."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(f"run.resume {resume!r} is not a checkpoint folder (no state.json); use 'never', 'auto' "
                         f"or a folder like {Path(root) / 'step_00030'}")
    return path


def load_checkpoint(path: Path, *, learner: LearnerGroup, prompts: PromptSource, lora: LoraConfig) -> Progress:
    """Restore the learner ranks, the prompt position and the driver's RNG from `path`; returns where to go on."""
    saved = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("policy", {}).get("lora")
    if saved != lora.model_dump(mode="json"):
        raise ValueError(f"checkpoint {path} holds LoRA {saved}, the config asks for {lora.model_dump(mode='json')}: "
                         "resume with the checkpoint's policy.lora settings, or set run.resume=never")
    state = json.loads((path / "state.json").read_text())
    training: dict[str, Any] = torch.load(path / "training_state.pt", weights_only=True)
    ranks = training["learner"]
    for name in ("theta", "old", "ema"):
        ranks[0][name] = read_lora(path / name)[0]
    learner.load_state(ranks, version=int(state["version"]))
    prompts.load_state(state["prompts"])
    torch.set_rng_state(training["driver_torch_rng"])
    return Progress(step=int(state["step"]), version=int(state["version"]))
