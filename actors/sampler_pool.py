"""The `SamplerPool`: Sampler actors; each `sample` call is handed to the caller's `score` step (Ray chains the
output ref into the GroupScorer, so the driver never touches the images).

It tracks calls in flight per actor, balances new calls to the least busy actor, broadcasts versioned weights,
and turns a dead actor's call into a resubmission (counted) and a stalled one into a clear error. A Sampler that
Ray restarted (on another node when its node was lost) gets the latest θ_old before any other call; one past
sampler.max_restarts leaves the pool, and one that finds no node with its resources for sampler.timeout_s stops the run.
Every θ_old a Sampler applies is verified: its checksum, read back from the adapter, must equal the learner's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from actors.group import GroupSummary
from actors.prompts import PromptGroup
from actors.sampler import Sampler
from configs.schema import PolicyConfig, SamplerConfig

Score = Callable[[ray.ObjectRef], tuple[ray.ObjectRef, ray.ObjectRef, ray.ObjectRef]]  # sampled -> 3 parts


@dataclass
class Call:
    actor: int
    groups: list[PromptGroup]
    score: Score  # the scoring step the call's output went to (a resubmission goes there too)
    training_ref: ray.ObjectRef  # list[TrainingGroup] once scored: what the learner fetches
    previews_ref: ray.ObjectRef  # (G, H, W, 3) uint8, the first image of each group, for grids
    seq: int  # submission order: tells whether a θ_old reload of its actor was queued before it
    version: int  # θ_old version the actor holds when it runs this call, unless it restarted meanwhile
    submitted: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Scored:
    """A finished sample call: small summaries for the driver; the learner's part and the previews stay in the
    object store until a consumer fetches them."""

    summaries: list[GroupSummary]
    training_ref: ray.ObjectRef
    previews_ref: ray.ObjectRef


class WeightSyncError(RuntimeError):
    """A Sampler holds another θ_old than the learner published for that version."""


class SamplerPool:
    def __init__(self, policy_cfg: PolicyConfig, sampler_cfg: SamplerConfig, *, max_inflight: int,
                 noise_level: float | None = None, ready_timeout_s: float = 300.0, log=print, wait: bool = True):
        """Starts the Sampler actors; with `wait`, returns once they are ready (else call `wait_ready` before use, so
        the caller can start other actors while these load the model)."""
        self.cfg, self.max_inflight, self.log = sampler_cfg, max_inflight, log
        self.ready_timeout_s = ready_timeout_s
        remote = ray.remote(Sampler).options(num_cpus=sampler_cfg.num_cpus, num_gpus=sampler_cfg.num_gpus,
                                             resources=dict(sampler_cfg.resources),
                                             max_restarts=sampler_cfg.max_restarts, max_task_retries=0)
        self.actors = [remote.remote(policy_cfg, sampler_cfg, index=i, noise_level=noise_level)
                       for i in range(sampler_cfg.num_actors)]
        self.calls: dict[ray.ObjectRef, Call] = {}  # summaries ref -> call
        self.weights: tuple[ray.ObjectRef, int] | None = None
        self.published: dict[int, ray.ObjectRef] = {}  # version -> the learner's checksum of that θ_old
        self.unverified: list[tuple[int, int, ray.ObjectRef]] = []  # (actor, version, ref of load_weights' answer)
        self.verified_broadcasts = 0  # θ_old loads whose checksum matched the learner's
        self.resubmitted_groups = 0
        self.restarts = [0] * len(self.actors)  # deaths seen per actor: failed calls or calls run on base weights
        self.restarting: dict[int, ray.ObjectRef] = {}  # actor -> a ready() that answers once Ray has rebuilt it
        self.restart_began: dict[int, float] = {}  # actor -> when its death was seen
        self.reloaded_at = [0] * len(self.actors)  # submission seq when a rebuilt actor was sent θ_old
        self.dead: set[int] = set()  # actors past sampler.max_restarts
        self.waiting: list[tuple[list[PromptGroup], Score]] = []  # a dead actor's groups while no actor can take them
        self.seq = 0
        self.ready_refs = [a.ready.remote() for a in self.actors]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until every Sampler has loaded the model, or RuntimeError after ready_timeout_s (counted from now)."""
        ready, pending = ray.wait(self.ready_refs, num_returns=len(self.actors), timeout=self.ready_timeout_s)
        if pending:
            cfg = self.cfg
            raise RuntimeError(
                f"{len(pending)} of {len(self.actors)} Sampler actors were not ready within "
                f"{self.ready_timeout_s:.0f}s; each needs CPU {cfg.num_cpus}, GPU {cfg.num_gpus}, custom "
                f"{cfg.resources}; the cluster has "
                f"{ray.available_resources()} free. Lower sampler.num_actors/num_cpus/num_gpus or add nodes")

    # ---- submission ---------------------------------------------------------------------------------------
    def load(self, actor: int) -> int:
        return sum(1 for c in self.calls.values() if c.actor == actor)

    def available(self) -> list[int]:
        """Actors that take calls: not dead, and not being rebuilt (Ray refuses calls to a restarting actor)."""
        return [i for i in range(len(self.actors)) if i not in self.dead and i not in self.restarting]

    def free_slots(self) -> int:
        return sum(max(0, self.max_inflight - self.load(i)) for i in self.available())

    @property
    def inflight_groups(self) -> int:
        return sum(len(c.groups) for c in self.calls.values()) + sum(len(groups) for groups, _ in self.waiting)

    def submit(self, groups: list[PromptGroup], score: Score) -> None:
        """Sample `groups` on the least busy actor and hand the output ref to `score` (summaries, training groups,
        previews refs), whose summaries `poll` waits for."""
        if not self.available():
            self.waiting.append((groups, score))
            return
        actor = min(self.available(), key=self.load)
        sampled = self.actors[actor].sample.remote(groups)
        summaries_ref, training_ref, previews_ref = score(sampled)
        self.seq += 1
        self.calls[summaries_ref] = Call(actor, groups, score, training_ref, previews_ref, self.seq,
                                         self.weights[1] if self.weights else 0)

    # ---- completion ---------------------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> list[Scored]:
        """Finished calls (waiting at most `timeout_s`); a dead actor's groups are resubmitted and counted."""
        self._check_restarts()
        if not self.calls:
            time.sleep(timeout_s)
            return []
        ready, _ = ray.wait(list(self.calls), num_returns=len(self.calls), timeout=timeout_s, fetch_local=True)
        done = []
        for ref in ready:
            call = self.calls.pop(ref)
            try:
                summaries = ray.get(ref)
            except (RayActorError, RayTaskError, ObjectLostError) as error:
                if isinstance(error, RayTaskError) and not isinstance(error.cause, (RayActorError, ObjectLostError)):
                    raise  # a bug in sampling or scoring, not a lost actor or node: surface it
                self._restarted(call, error)  # first, so the groups go to another actor
                self.resubmitted_groups += len(call.groups)
                self.submit(call.groups, call.score)
                continue
            if min(s.policy_version for s in summaries) < call.version:  # sampled by a restarted actor's base
                self._restarted(call)  # weights: the groups say so, and the buffer judges their staleness
            done.append(Scored(summaries, call.training_ref, call.previews_ref))
        self._check_stalled()
        return done

    def _restarted(self, call: Call, error: Exception | None = None) -> None:
        """Ray rebuilds a dead Sampler from the base weights: count each death once and wait for it to be back."""
        if call.actor in self.restarting or call.actor in self.dead or call.seq <= self.reloaded_at[call.actor]:
            return  # a call submitted before the actor was rebuilt: the same death, already handled
        self.restarts[call.actor] += 1
        # retried by Ray until the actor is alive again; it fails only once the actor is out of restarts
        self.restarting[call.actor] = self.actors[call.actor].ready.options(max_task_retries=-1).remote()
        self.restart_began[call.actor] = time.time()
        cause = f" ({type(error).__name__})" if error is not None else ""
        self.log(f"Sampler {call.actor} lost{cause}: Ray restarts it on a node with {self.needs()} free; "
                 "its groups are resubmitted")

    def needs(self) -> str:
        """The resources one Sampler reserves, as Ray schedules it."""
        return str({"CPU": self.cfg.num_cpus, "GPU": self.cfg.num_gpus, **self.cfg.resources})

    def _check_restarts(self) -> None:
        """A rebuilt actor gets the latest θ_old ahead of any call (an actor runs its calls in order)."""
        finished = ray.wait(list(self.restarting.values()), num_returns=len(self.restarting), timeout=0)[0] \
            if self.restarting else []
        for actor, ref in list(self.restarting.items()):
            if ref not in finished:
                continue
            del self.restarting[actor]
            waited = time.time() - self.restart_began.pop(actor)
            try:
                ray.get(ref)
            except RayActorError:
                self.dead.add(actor)  # past sampler.max_restarts
                continue
            self.log(f"Sampler {actor} is back after {waited:.0f}s")
            if self.weights is not None:
                weights_ref, version = self.weights
                self.unverified.append((actor, version, self.actors[actor].load_weights.remote(weights_ref, version)))
            self.reloaded_at[actor] = self.seq
        if len(self.dead) == len(self.actors):
            raise RuntimeError(f"all {len(self.actors)} Sampler actors died more than sampler.max_restarts "
                               f"({self.cfg.max_restarts}) times; see their errors above (out of memory?)")
        late = {a: time.time() - t for a, t in self.restart_began.items() if time.time() - t > self.cfg.timeout_s}
        if late:
            raise TimeoutError(
                f"Samplers {sorted(late)} not back within sampler.timeout_s ({self.cfg.timeout_s:g}s) after they were "
                f"lost: no node has {self.needs()} free (the cluster has {ray.available_resources()} free), or "
                "rebuilding them takes longer. Add a node that offers these resources (grow the sampler node group), "
                "lower sampler.num_actors/num_cpus/num_gpus, or raise sampler.timeout_s")
        while self.waiting and self.available():
            self.submit(*self.waiting.pop(0))

    def waiting_for(self) -> str:
        """What the pool waits for, for the driver's wait log: Samplers being restarted and what they need."""
        if not self.restarting:
            return ""
        return f"Samplers {sorted(self.restarting)} wait to be restarted on a node with {self.needs()} free"

    def counts(self) -> dict[str, int]:
        """Fault counts for the run's metrics log."""
        return {"resubmitted_groups": self.resubmitted_groups, "sampler_restarts": sum(self.restarts),
                "dead_samplers": len(self.dead)}

    def _check_stalled(self) -> None:
        now = time.time()
        for call in self.calls.values():
            # a call waits behind up to max_inflight − 1 others on its actor before it starts
            if now - call.submitted > self.cfg.timeout_s * self.max_inflight:
                raise TimeoutError(
                    f"Sampler {call.actor} has not finished a sample call in {now - call.submitted:.0f}s "
                    f"(sampler.timeout_s = {self.cfg.timeout_s}); the actor may be stalled or starved of CPU/GPU")

    # ---- weights ------------------------------------------------------------------------------------------
    def broadcast_weights(self, weights_ref: ray.ObjectRef, version: int,
                          checksum_ref: ray.ObjectRef) -> list[ray.ObjectRef]:
        """Every Sampler swaps θ_old to `version` after its queued calls; returns refs of (applied time, checksum).
        `checksum_ref` is the learner's checksum of those weights, which `verify` holds every Sampler to."""
        self.weights = (weights_ref, version)
        self.published[version] = checksum_ref
        published_at = time.time()  # each Sampler exports its own publish -> applied latency
        applied = [(i, self.actors[i].load_weights.remote(weights_ref, version, published_at))
                   for i in self.available()]
        self.unverified += [(i, version, ref) for i, ref in applied]
        return [ref for _, ref in applied]

    def verify(self, timeout_s: float = 0.0) -> int:
        """Check every θ_old load that has finished (waiting up to `timeout_s` for the rest) against the learner's
        checksum of its version; a mismatch raises WeightSyncError. Returns how many loads are still unchecked."""
        if self.unverified:
            refs = [ref for *_, ref in self.unverified]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=timeout_s)[0])
            pending = []
            for actor, version, ref in self.unverified:
                if ref not in ready:
                    pending.append((actor, version, ref))
                    continue
                try:
                    applied = ray.get(ref)[1]
                except RayActorError:
                    continue  # died meanwhile: its rebuilt actor's load is verified instead
                expected = ray.get(self.published[version])
                if applied != expected:
                    raise WeightSyncError(
                        f"Sampler {actor} holds θ_old version {version} with checksum {applied}, but the learner "
                        f"published {expected}: the weights changed between the learner and the sampler (object "
                        "store corruption, or a LoRA layout the sampler's policy maps differently). Training on its "
                        "samples would use the wrong v_old; stopping. Check that learner and samplers run the same "
                        "code and policy config")
                self.verified_broadcasts += 1
            self.unverified = pending
        live = {version for _, version, _ in self.unverified} | {self.weights[1] if self.weights else 0}
        self.published = {v: ref for v, ref in self.published.items() if v >= min(live)}
        return len(self.unverified)

    def applied_times(self, applied: list[ray.ObjectRef]) -> list[float]:
        """When each Sampler applied a broadcast; one that died meanwhile has no time (poll handles its death)."""
        times = []
        for ref in applied:
            try:
                times.append(ray.get(ref)[0])
            except RayActorError:
                continue
        return times

    def evaluate_async(self, groups: list[PromptGroup], weights_ref: ray.ObjectRef | None, version: int, *,
                       solver: str, num_steps: int, guidance_scale: float, per_call: int) -> list[ray.ObjectRef]:
        """Held-out groups spread over the actors; refs of list[Group]."""
        chunks = [groups[i:i + per_call] for i in range(0, len(groups), per_call)]
        while not self.available():  # every actor is being rebuilt: evaluation waits for the first one back
            self._check_restarts()
            time.sleep(0.1)
        live = self.available()
        return [self.actors[live[i % len(live)]].evaluate.remote(
            chunk, weights_ref, version, solver=solver, num_steps=num_steps, guidance_scale=guidance_scale)
            for i, chunk in enumerate(chunks)]

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
