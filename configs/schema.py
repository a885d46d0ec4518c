"""The typed run configuration: one frozen pydantic model per component, loaded from YAML plus dotted overrides.

Every other module receives only its own section (`cfg.sampler`, `cfg.learner`, ...). Unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SD3_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(Section):
    rank: int = Field(32, ge=1, description="LoRA rank r of every adapted projection")
    alpha: float = Field(64.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    init: Literal["gaussian", "default"] = Field("gaussian", description="peft init_lora_weights")
    target_modules: tuple[str, ...] = Field(SD3_LORA_TARGETS, description="module names of the transformer to adapt")


class PolicyConfig(Section):
    pretrained: str = Field(
        ..., description="local pipeline directory or hub id, e.g. stabilityai/stable-diffusion-3.5-medium")
    revision: str | None = Field(None, description="hub revision, when pretrained is a hub id")
    resolution: int = Field(512, ge=8, description="image height and width in pixels")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights of the frozen parts")
    max_sequence_length: int = Field(128, ge=1, description="T5 tokens (SD3 with T5, FLUX) or Qwen2.5-VL tokens "
                                     "(Qwen-Image) per prompt; SD3 without T5 ignores it")
    embedded_guidance: float = Field(3.5, gt=0, description="the guidance input of guidance-distilled models "
                                     "(FLUX.1-dev's guidance embedding); ignored by models without one")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="the trained adapter θ and its twin θ_old")


class SamplerConfig(Section):
    num_actors: int = Field(1, ge=1, description="Sampler actors in the pool")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per Sampler actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per Sampler actor")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per Sampler actor, "
                                        "e.g. {nft_sampler: 1}: it then runs only on nodes that offer them")
    solver: Literal["euler", "dpm2", "unipc"] = Field(
        "dpm2", description="ODE solver for data collection (NFT; Flow-GRPO collects with its SDE) and evaluation")
    num_steps: int = Field(10, ge=1, description="solver steps per image during collection")
    shift: float = Field(3.0, gt=0, description="SD3 sigma shift of the timestep schedule (FLUX and Qwen-Image "
                         "shift by resolution as their scheduler config says, and do not read it)")
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance; 1.0 = off, as NFT collects")
    groups_per_call: int = Field(1, ge=1, description="prompt groups sampled by one `sample` call")
    max_restarts: int = Field(3, ge=0, description="Ray restarts of a dead Sampler actor")
    timeout_s: float = Field(600.0, gt=0, description="a `sample` call slower than this is reported as stalled")
    cpu_affinity: list[int] = Field(default_factory=list, description="pin each Sampler process to these CPU "
                                    "cores (os.sched_setaffinity) with one torch thread per core; empty = unpinned. "
                                    "For measuring stages on one node as a cluster would run them")


class PromptConfig(Section):
    train: str = Field(..., description="training prompts: GenEval-style .jsonl or one prompt per line .txt")
    test: str | None = Field(None, description="held-out prompts for evaluation (same formats)")
    group_size: int = Field(24, ge=2, description="K: images per prompt, the group of the advantage")
    seed: int = Field(0, description="seed of the prompt order")


class AutoscaleConfig(Section):
    """Reward replicas that follow the load (deploy/reward_scaling.py); off by default, for Ray replicas only."""

    enabled: bool = Field(False, description="add and remove reward replicas by load while the job runs")
    min_replicas: int = Field(1, ge=1, description="fewest reward replicas, by load or by the operator")
    max_replicas: int = Field(4, ge=1, description="most reward replicas, by load or by the operator")
    target_outstanding: float = Field(4.0, gt=0, description="outstanding requests per replica, averaged over "
                                      "window_s, above which one replica is added")
    scale_down_below: float = Field(0.5, gt=0, lt=1, description="one replica is removed when the outstanding "
                                    "requests per replica, averaged over window_s, are below target_outstanding × this")
    window_s: float = Field(30.0, gt=0, description="seconds a load must hold before a change; the history starts "
                            "anew after each change, so changes are at least this far apart")
    interval_s: float = Field(1.0, gt=0, description="seconds between two load samples")
    drain_timeout_s: float = Field(120.0, gt=0, description="longest wait for a removed replica's in-flight requests "
                                   "before it is stopped anyway (the client then retries them elsewhere)")

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscaleConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"reward.autoscale.min_replicas ({self.min_replicas}) must be <= "
                             f"reward.autoscale.max_replicas ({self.max_replicas})")
        return self


class RewardConfig(Section):
    weights: dict[str, float] = Field(..., min_length=1, description="scorer name -> weight of the training reward")
    scorer_args: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per scorer options, e.g. {pickscore: {model: /ckpt/dir}}")
    replicas: int = Field(1, ge=0, description="reward servers started as Ray actors (0 with external urls)")
    urls: tuple[str, ...] = Field((), description="external reward servers, scaled by the operator")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per reward replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per reward replica")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per reward replica, "
                                        "e.g. {nft_reward: 1}: it then runs only on nodes that offer them")
    api_key: str | None = Field(None, description="Bearer key the servers require and the client sends")
    protocol: Literal["nft", "flow_grpo_geneval"] = Field(
        "nft", description="wire protocol of the reward servers: ours, or the Flow-GRPO ecosystem's GenEval server "
        "(pickle over HTTP: for trusted servers only, since unpickling an answer can run code; reward.urls only, "
        "weights on geneval / geneval_strict)")
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout of one score request")
    max_retries: int = Field(3, ge=0, description="retries of a failed request, each on another replica")
    max_batch: int = Field(64, ge=1, description="images per HTTP request")
    autoscale: AutoscaleConfig = Field(default_factory=AutoscaleConfig, description="replicas by load")

    @model_validator(mode="after")
    def _check_autoscale(self) -> RewardConfig:
        scale = self.autoscale
        if scale.enabled and not scale.min_replicas <= self.replicas <= scale.max_replicas:
            raise ValueError(
                f"reward.replicas ({self.replicas}) must lie within reward.autoscale.min_replicas "
                f"({scale.min_replicas}) and max_replicas ({scale.max_replicas}) when reward.autoscale.enabled; "
                "external reward.urls (replicas 0) are scaled by their operator, not by the job")
        return self


class OldPolicySchedule(Section):
    """θ_old ← d·θ_old + (1 − d)·θ after each update, d(s) = 0 if s < flat else min(uprate·(s − flat), cap)."""

    flat: int = Field(0, ge=0, description="optimizer steps with d = 0 (θ_old copies θ)")
    uprate: float = Field(0.001, ge=0, description="growth of d per optimizer step after `flat`")
    cap: float = Field(0.5, ge=0, lt=1, description="largest d")


class LearnerConfig(Section):
    num_ranks: int = Field(1, ge=1, description="DDP ranks of the LearnerGroup")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per rank")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads per rank (None: Ray's OMP_NUM_THREADS, the whole CPUs reserved, "
        "at least 1); more than num_cpus suits the synchronous schedule, where samplers idle during an update")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per rank")
    cpu_affinity: list[int] = Field(default_factory=list, description="pin each learner rank to these CPU cores "
                                    "(os.sched_setaffinity) with num_threads or one torch thread per core; empty = "
                                    "unpinned. For measuring stages on one node as a cluster would run them")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per rank, "
                                        "e.g. {nft_learner: 1}: ranks then run only on nodes that offer them")
    max_recoveries: int = Field(
        3, ge=0, description="times a run replaces a dead learner rank: the group is rebuilt from its state after the "
        "last update (kept in Ray's object store) and the update is retried (0 = a dead rank ends the run, and no "
        "state copy is kept per update)")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend; auto = nccl on GPU")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate (the peak, under a cosine schedule)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant lr, or a cosine decay from lr to lr·lr_final_ratio over lr_decay_updates")
    lr_final_ratio: float = Field(0.1, ge=0, le=1, description="cosine: the lr it ends at, as a share of lr")
    lr_decay_updates: int = Field(0, ge=0, description="cosine: updates the decay spans, then flat (0 = the run's "
                                  "run.num_updates)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip")
    micro_batch_size: int = Field(8, ge=1, description="samples per forward/backward on one rank")
    gradient_steps_per_update: int = Field(1, ge=1, description="optimizer steps per update (per epoch of data)")
    timestep_fraction: float = Field(0.99, gt=0, le=1, description="share of the collection timesteps trained on")
    nft_beta: float = Field(1.0, gt=0, description="β: mixing of v_theta and v_old in the implicit policies")
    kl_coef: float = Field(1e-4, ge=0, description="weight of the velocity KL to the base θ_ref")
    adv_clip_max: float = Field(5.0, gt=0, description="advantage clip; also scales the policy loss")
    global_std: bool = Field(True, description="normalise advantages by the std of all rewards, not the group's")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="autocast dtype of the transformer")
    old_policy: OldPolicySchedule = Field(default_factory=OldPolicySchedule, description="θ_old EMA schedule")
    eval_ema_decay: float = Field(0.9, ge=0, lt=1,
                                  description="EMA of θ for evaluation, warmed up as min((1 + s)/(10 + s), decay)")


class FlowGrpoConfig(Section):
    """Flow-GRPO's own settings (`algorithm: flow_grpo`); the optimizer and batch settings stay in `learner`."""

    noise_level: float = Field(0.7, gt=0, description="SDE noise: std = noise_level·sqrt(σ/(1−σ)) at collection")
    clip_range: float = Field(1e-4, gt=0, description="PPO clip of the probability ratio")
    beta: float = Field(0.0, ge=0, description="weight of the KL of each step to the base model (0 = none)")
    adv_clip_max: float = Field(5.0, gt=0, description="advantages are clipped to ±adv_clip_max")
    timestep_fraction: float = Field(0.99, gt=0, le=1, description="share of the collection steps trained on")


class ScheduleConfig(Section):
    groups_per_update: int = Field(48, ge=1, description="prompt groups consumed by one learner update")
    max_inflight: int = Field(2, ge=1, description="sample calls in flight per Sampler actor")
    max_policy_lag: int = Field(1, ge=0, description="drop samples older than this many policy versions")
    buffer_capacity: int = Field(256, ge=1, description="scored groups the Buffer holds at most")
    skip_uniform_groups: bool = Field(
        False, description="drop a group whose K images all got the same reward (every advantage 0, so it only pulls "
        "θ toward θ_old) and sample another in its place; the skipped images still count as sampled")


class EvalConfig(Section):
    every: int = Field(10, ge=0, description="evaluate every this many updates (0 = only at start and end)")
    num_steps: int = Field(40, ge=1, description="solver steps at evaluation")
    solver: Literal["euler", "dpm2", "unipc"] = Field("dpm2", description="ODE solver at evaluation")
    num_prompts: int = Field(0, ge=0, description="prompt rows evaluated per set, the first of each file (0 = all)")
    images_per_prompt: int = Field(1, ge=1, le=1000, description="images per row of the held-out set (prompts.test)")
    in_distribution_images_per_prompt: int = Field(
        0, ge=0, le=1000, description="images per row of the in-distribution set: the training prompts at "
        "evaluation seeds, which training never draws (0 = no in-distribution set)")
    use_ema: bool = Field(False, description="evaluate the EMA of θ instead of θ")
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance at evaluation")


class RunConfig(Section):
    name: str = Field("nft", description="run name; the run directory is output_dir/name")
    output_dir: str = Field("runs", description="parent folder of run directories")
    num_updates: int = Field(100, ge=1, description="learner updates to perform")
    seed: int = Field(0, description="global seed")
    checkpoint_every: int = Field(30, ge=0, description="checkpoint every this many updates (0 = only at the end)")
    grid_every: int = Field(10, ge=0, description="save a sample grid every this many updates (0 = never)")
    resume: str = Field("never", description="'never', 'auto' (latest checkpoint of the run dir) or a checkpoint dir")
    progress: bool = Field(True, description="show a progress bar")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="experiment trackers besides the run directory (wandb honours "
        "WANDB_MODE=offline and WANDB_PROJECT)")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Prometheus port of Ray's metrics agent when the run starts its own Ray "
        "(None = a free one; on a cluster `ray start --metrics-export-port` sets it)")


class Config(Section):
    algorithm: Literal["nft", "flow_grpo"] = Field(
        "nft", description="nft: DiffusionNFT on clean x0 from any ODE solver; flow_grpo: Flow-GRPO on SDE "
        "trajectories with their log-probabilities (its settings: the flow_grpo section)")
    flow_grpo: FlowGrpoConfig = Field(default_factory=FlowGrpoConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    policy: PolicyConfig
    prompts: PromptConfig
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    reward: RewardConfig
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        images = self.schedule.groups_per_update * self.prompts.group_size
        per_step = self.learner.num_ranks * self.learner.micro_batch_size * self.learner.gradient_steps_per_update
        if images % per_step:
            raise ValueError(
                f"schedule.groups_per_update ({self.schedule.groups_per_update}) × prompts.group_size "
                f"({self.prompts.group_size}) = {images} images per update must be a multiple of learner.num_ranks "
                f"({self.learner.num_ranks}) × learner.micro_batch_size ({self.learner.micro_batch_size}) × "
                f"learner.gradient_steps_per_update ({self.learner.gradient_steps_per_update}) = {per_step}")
        if self.schedule.max_policy_lag == 0 and self.schedule.max_inflight != 1:
            raise ValueError(
                f"schedule.max_policy_lag 0 (the synchronous schedule) needs schedule.max_inflight 1, "
                f"got {self.schedule.max_inflight}: samples drawn during an update would all be dropped")
        if self.schedule.buffer_capacity < self.schedule.groups_per_update:
            raise ValueError(
                f"schedule.buffer_capacity ({self.schedule.buffer_capacity}) must hold one update: "
                f">= schedule.groups_per_update ({self.schedule.groups_per_update})")
        if self.reward.protocol == "flow_grpo_geneval" and (
                self.reward.replicas or set(self.reward.weights) - {"geneval", "geneval_strict"}):
            raise ValueError(
                "reward.protocol flow_grpo_geneval talks to an external GenEval server: set reward.replicas=0, "
                "reward.urls to its address, and weights on geneval and/or geneval_strict only "
                f"(got replicas {self.reward.replicas}, weights {dict(self.reward.weights)})")
        if self.reward.urls and self.reward.replicas:
            raise ValueError(
                f"reward.urls ({len(self.reward.urls)} given) and reward.replicas ({self.reward.replicas}) exclude "
                "each other: set reward.replicas=0 to use external servers")
        if not self.reward.urls and not self.reward.replicas:
            raise ValueError("reward.replicas is 0 and reward.urls is empty: no reward server to score with")
        if self.algorithm == "flow_grpo" and self.sampler.num_steps < 2:
            raise ValueError(f"algorithm flow_grpo needs sampler.num_steps >= 2 (got {self.sampler.num_steps}): its "
                             "SDE's first step takes σ_max, the schedule's second noise level")
        fraction, name = ((self.flow_grpo.timestep_fraction, "flow_grpo.timestep_fraction") if self.algorithm ==
                          "flow_grpo" else (self.learner.timestep_fraction, "learner.timestep_fraction"))
        if int(self.sampler.num_steps * fraction) == 0:
            raise ValueError(
                f"{name} ({fraction}) × sampler.num_steps ({self.sampler.num_steps}) trains on "
                f"int({self.sampler.num_steps * fraction:g}) = 0 timesteps per sample: raise {name} to at least "
                f"{1 / self.sampler.num_steps:.3g} or collect with more steps")
        if self.policy.resolution % 8:
            raise ValueError(f"policy.resolution ({self.policy.resolution}) must be a multiple of 8")
        return self
