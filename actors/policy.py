"""The diffusion policy: SD3-architecture components loaded through one path, with the LoRA adapters θ and θ_old.

`encode(prompts) -> (embeds, pooled)`, `velocity(xt, t, embeds, pooled) -> v`, `decode(x0) -> uint8 images`.
θ_ref is the base model (adapters disabled). SD3.5-Medium and the embedded tiny policy load the same way.
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
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

from configs.schema import PolicyConfig

THETA = "theta"  # the trained adapter
OLD = "old"  # the sampling policy θ_old
LAGGED = "lagged"  # θ_old of an earlier version, for samples drawn before the latest update (learner only)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def encode_prompts(prompts: list[str], tokenizers, text_encoders, t5, *, joint_dim: int, max_sequence_length: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-L ⊕ CLIP-G penultimate hidden states (then T5 tokens along the sequence), pooled CLIP projections.

    As diffusers' SD3 pipeline, except that without a T5 encoder no all-zero T5 tokens are appended.
    """
    states, pooled = [], []
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    clip = torch.cat(states, dim=-1)  # (B, L, D_l + D_g)
    embeds = F.pad(clip, (0, joint_dim - clip.shape[-1]))  # (B, L, joint_dim)
    if t5 is not None:
        tokenizer, encoder = t5
        ids = tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        embeds = torch.cat([embeds, encoder(ids)[0]], dim=1)  # (B, L + L_t5, joint_dim)
    return embeds.float(), torch.cat(pooled, dim=-1).float()


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
    """Frozen text encoders (+ VAE when latent), transformer with adapters `theta` and/or `old`."""

    def __init__(self, *, tokenizers, text_encoders, t5, transformer, vae, shift: float, cfg: PolicyConfig,
                 adapters: tuple[str, ...], device: str | torch.device = "cpu"):
        self.cfg, self.device, self.shift = cfg, torch.device(device), shift
        self.tokenizers, self.text_encoders, self.t5, self.vae = tokenizers, text_encoders, t5, vae
        self.transformer = transformer
        for module in [*text_encoders, t5, vae, transformer]:
            if module is not None:
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
        """Load every component with its `from_pretrained` from a local pipeline directory or hub id."""
        index = read_model_index(cfg.pretrained, cfg.revision)
        dtype, kw = DTYPES[cfg.dtype], {"revision": cfg.revision}

        def present(name: str) -> bool:
            return name in index and index[name][0] is not None

        for name in ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
            if not present(name):
                raise ValueError(f"policy.pretrained {cfg.pretrained!r} lacks the {name!r} component an SD3 "
                                 "pipeline needs")
        tokenizers = [AutoTokenizer.from_pretrained(cfg.pretrained, subfolder=n, **kw)
                      for n in ("tokenizer", "tokenizer_2")]
        encoders = [CLIPTextModelWithProjection.from_pretrained(cfg.pretrained, subfolder=n, torch_dtype=dtype, **kw)
                    for n in ("text_encoder", "text_encoder_2")]
        t5 = None
        if present("text_encoder_3"):
            t5 = (AutoTokenizer.from_pretrained(cfg.pretrained, subfolder="tokenizer_3", **kw),
                  T5EncoderModel.from_pretrained(cfg.pretrained, subfolder="text_encoder_3", torch_dtype=dtype, **kw))
        vae = AutoencoderKL.from_pretrained(cfg.pretrained, subfolder="vae", torch_dtype=dtype, **kw) \
            if present("vae") else None
        transformer = SD3Transformer2DModel.from_pretrained(cfg.pretrained, subfolder="transformer",
                                                            torch_dtype=dtype, **kw)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(cfg.pretrained, subfolder="scheduler", **kw)
        return cls(tokenizers=tokenizers, text_encoders=encoders, t5=t5, transformer=transformer, vae=vae,
                   shift=float(scheduler.config.shift), cfg=cfg, adapters=adapters, device=device)

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of x0: latents when a VAE is present, else pixels."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        size = self.cfg.resolution // factor
        return (self.transformer.config.in_channels, size, size)

    # ---- the three calls of the contract ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SD3 text conditioning of `prompts`: (embeds (B, L, D), pooled (B, D))."""
        return encode_prompts(prompts, self.tokenizers, self.text_encoders, self.t5,
                              joint_dim=self.transformer.config.joint_attention_dim,
                              max_sequence_length=self.cfg.max_sequence_length, device=self.device)

    def velocity(self, xt: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """v ≈ ε − x0 of the active adapter at `t` in [0, 1] (the transformer takes 1000·t)."""
        dtype = next(self.transformer.parameters()).dtype
        # the timestep stays float32: in bf16, 1000·t rounds (913.35 -> 916) while xt was noised with the exact t
        v = self.denoiser(hidden_states=xt.to(dtype), timestep=1000.0 * t.float(),
                          encoder_hidden_states=embeds.to(dtype), pooled_projections=pooled.to(dtype),
                          return_dict=False)[0]
        return v.float()

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
        """x0 (B, C, h, w) → uint8 images (B, H, W, 3)."""
        if self.vae is not None:
            latents = x0.to(self.vae.dtype) / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
            x0 = self.vae.decode(latents, return_dict=False)[0].float()
        images = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

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
