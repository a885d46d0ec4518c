"""The diffusion policy: a model family (actors/families) loaded through one path, with the LoRA adapters θ and θ_old.

`encode(prompts) -> (embeds, extra)`, `velocity(xt, t, embeds, extra) -> v`, `sigmas(num_steps, shift)`,
`decode(x0) -> uint8 images`. θ_ref is the base model (adapters disabled). The family comes from the pipeline's
model_index.json (SD3 / SD3.5 and the embedded tiny policy, FLUX.1, Qwen-Image); every one loads the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from actors.families import Family, family_class
from configs.schema import PolicyConfig

THETA = "theta"  # the trained adapter
OLD = "old"  # the sampling policy θ_old
LAGGED = "lagged"  # θ_old of an earlier version, for samples drawn before the latest update (learner only)


def read_model_index(pretrained: str, revision: str | None) -> dict:
    local = Path(pretrained)
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ValueError(f"policy.pretrained {pretrained!r} has no model_index.json: not a diffusers pipeline")
        return json.loads((local / "model_index.json").read_text())
    if local.suffix or pretrained.startswith((".", "/")):
        raise ValueError(f"policy.pretrained {pretrained!r} is not a directory (and does not look like a hub id)")
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(pretrained, "model_index.json", revision=revision)).read_text())
    except Exception as error:  # the hub raises many types; all mean the same thing to the user
        raise ValueError(f"policy.pretrained {pretrained!r}: cannot fetch model_index.json from the hub ({error}); "
                         "download the pipeline and point policy.pretrained at its directory") from error


def weights_checksum(state: dict[str, torch.Tensor | np.ndarray]) -> str:
    """SHA-256 (first 16 hex digits) of a LoRA state's names and float32 bytes: equal iff the weights are equal."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        array = value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else value
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def as_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A LoRA state as float32 numpy arrays: Ray stores and reads them without pickling (zero-copy on read)."""
    return {key: value.detach().cpu().float().numpy() for key, value in state.items()}


class Policy:
    """A model family's frozen parts and transformer, with adapters `theta` and/or `old` on the transformer."""

    def __init__(self, *, family: Family, cfg: PolicyConfig, adapters: tuple[str, ...],
                 device: str | torch.device = "cpu"):
        self.cfg, self.device, self.family = cfg, torch.device(device), family
        self.transformer = transformer = family.transformer
        self.shift = float(family.scheduler.get("shift", 1.0))  # the pipeline scheduler's static shift
        for module in [*family.frozen, transformer]:
            module.requires_grad_(False).eval().to(self.device)
        lora = PeftLoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, init_lora_weights=cfg.lora.init,
                              target_modules=list(cfg.lora.target_modules))
        with warnings.catch_warnings():  # peft warns on every adapter after the first; two are the design
            warnings.simplefilter("ignore", UserWarning)
            for name in adapters:
                transformer.add_adapter(lora, adapter_name=name)
        self.adapters = adapters
        self._lora_layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
        for key, p in transformer.named_parameters():
            is_theta = f".{THETA}." in key  # only θ trains; θ_old moves by EMA, θ_ref never
            if ".lora_" in key:
                p.data = p.data.float()
            p.requires_grad_(is_theta)
        self.denoiser: torch.nn.Module = transformer  # the learner swaps in a DDP wrapper of the transformer
        self._active: str | None = None
        self._uncond: tuple[torch.Tensor, torch.Tensor] | None = None  # the empty prompt's conditioning, for CFG
        self.use_adapter(adapters[0] if adapters else None)

    @classmethod
    def from_pretrained(cls, cfg: PolicyConfig, *, adapters: tuple[str, ...] = (THETA, OLD),
                        device: str | torch.device = "cpu") -> Policy:
        """Load every component with its `from_pretrained` from a local pipeline directory or hub id; the family
        is the pipeline's `_class_name` in model_index.json."""
        index = read_model_index(cfg.pretrained, cfg.revision)
        family = family_class(index, cfg.pretrained).from_pretrained(cfg, index)
        return cls(family=family, cfg=cfg, adapters=adapters, device=device)

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one x0 (e.g. (C, h, w)); its layout is the family's."""
        return self.family.latent_shape()

    def sigmas(self, num_steps: int, shift: float) -> torch.Tensor:
        """The family's sigma schedule: SD3's static `shift`, or FLUX's / Qwen-Image's resolution-dependent one."""
        return self.family.sigmas(num_steps, shift)

    # ---- the calls of the contract --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The family's conditioning of `prompts`: (embeds (B, L, D), extra (B, ...)), see actors.families.base."""
        return self.family.encode(prompts)

    def velocity(self, xt: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """v ≈ ε − x0 of the active adapter at `t` in [0, 1]; `pooled` is the family's second conditioning tensor."""
        return self.family.velocity(self.denoiser, xt, t, embeds, pooled)

    def guided_velocity(self, xt: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                        guidance_scale: float) -> torch.Tensor:
        """`velocity` with classifier-free guidance v_u + g·(v − v_u) against the empty prompt when g > 1."""
        v = self.velocity(xt, t, embeds, pooled)
        if guidance_scale > 1.0:
            if self._uncond is None:
                self._uncond = self.encode([""])
            v_uncond = self.velocity(xt, t, self._uncond[0].expand_as(embeds), self._uncond[1].expand_as(pooled))
            v = v_uncond + guidance_scale * (v - v_uncond)
        return v

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """x0 (B, ...) → uint8 images (B, H, W, 3)."""
        return self.family.decode(x0)

    # ---- adapters -----------------------------------------------------------------------------------------
    def use_adapter(self, name: str | None) -> None:
        """Make `name` the adapter of `velocity`; None is θ_ref. requires_grad is left alone (DDP hooks rely on it)."""
        if name is not None and name not in self.adapters:
            raise ValueError(f"adapter {name!r} not loaded; this policy has {self.adapters}")
        for layer in self._lora_layers:
            layer._disable_adapters = name is None
            if name is not None:
                layer._active_adapter = [name]
        self._active = name

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        previous = self._active
        self.use_adapter(name)
        try:
            yield
        finally:
            self.use_adapter(previous)

    def lora_parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """The LoRA parameters of adapter `name`, keyed by their name with the adapter part removed."""
        marker = f".{name}."
        return {key.replace(marker, "."): p for key, p in self.transformer.named_parameters() if marker in key}

    def get_weights(self, name: str = OLD) -> dict[str, torch.Tensor]:
        """A CPU copy of adapter `name` in peft's state-dict format (what the learner broadcasts)."""
        state = get_peft_model_state_dict(self.transformer, adapter_name=name)
        return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}

    def load_weights(self, state: dict[str, torch.Tensor | np.ndarray], name: str = OLD) -> None:
        """Copy a LoRA state (peft's key format, as `get_weights` gives; torch tensors or numpy arrays, read-only
        ones included) into adapter `name`'s parameters."""
        params = self.lora_parameters(name)
        if state.keys() != params.keys():
            unknown, missing = sorted(state.keys() - params.keys()), sorted(params.keys() - state.keys())
            raise ValueError(f"LoRA weights for adapter {name!r} do not match this policy: {len(unknown)} unknown "
                             f"keys (e.g. {unknown[:1]}), {len(missing)} missing (e.g. {missing[:1]}); they come "
                             "from another architecture or LoRA target set")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only array (Ray's zero-copy read) is only read here
            for key, value in state.items():
                # in place: DDP hooks and optimizer state keep pointing at the same tensors
                params[key].copy_(torch.from_numpy(value) if isinstance(value, np.ndarray) else value)
