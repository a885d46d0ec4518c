"""Weight broadcast: publish-to-applied latency of θ_old through the object store, as `SamplerPool.broadcast_weights`
does it (`Sampler.load_weights(ref, version)` on idle real Sampler actors of the tiny policy), for 1, 2, 4, 8
samplers, against a raw `ray.put` + `ray.get` of the same bytes by one other process.
"""

from __future__ import annotations

import copy
import os
import pickle
import time

import ray
import torch

from actors.policy import OLD, Policy, as_numpy, weights_checksum
from actors.sampler_pool import SamplerPool
from bench.context import BenchContext, ray_session
from bench.paired import Spread, alternate, ratios, target
from bench.report import spread_text
from configs.schema import Config


class Receiver:
    """The baseline's other process: fetches the object and does nothing with it."""

    def fetch(self, refs: list) -> float:
        ray.get(refs[0])
        return time.time()

    def ready(self) -> bool:
        return True


def apply_seconds(policy: Policy, weights: dict, repeats: int) -> dict[str, Spread]:
    """What each sampler does on receipt, here in one process: unpickle the state, then load it into θ_old; and,
    for comparison only, a plain copy_ into θ_old's parameters (not the shipped path)."""
    blob = pickle.dumps(weights, protocol=5)
    params = policy.lora_parameters(OLD)
    seconds: dict[str, list[float]] = {"unpickle": [], "load_weights": [], "copy_": []}
    for _ in range(repeats):
        start = time.perf_counter()
        state = pickle.loads(blob)
        middle = time.perf_counter()
        policy.load_weights(state, OLD)
        end = time.perf_counter()
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)
        seconds["unpickle"].append(middle - start)
        seconds["load_weights"].append(end - middle)
        seconds["copy_"].append(time.perf_counter() - end)
    return {name: Spread.of(v) for name, v in seconds.items()}


def publish_seconds(cfg: Config, weights: dict, counts: tuple[int, ...], rounds: int) -> dict[str, list[float]]:
    """Per side and round: seconds from publishing fresh θ_old bytes to the last sampler (or receiver) having them."""
    with ray_session():
        pool = SamplerPool(cfg.policy, cfg.sampler, max_inflight=1)
        receiver = ray.remote(Receiver).options(num_cpus=0).remote()
        ray.get(receiver.ready.remote())
        version = [0]

        def publish(apply) -> float:
            """Seconds from the start of ray.put of fresh θ_old bytes to the last `applied` time."""
            version[0] += 1
            state = as_numpy({k: v + 1e-6 * version[0] for k, v in weights.items()})  # new bytes every version
            checksum = ray.put(weights_checksum(state))  # the learner computes it beside the weights
            start = time.time()
            ref = ray.put(state)  # what Learner.publish ships: numpy arrays
            answers = ray.get(apply(ref, version[0], checksum))
            return max(a if isinstance(a, float) else a[0] for a in answers) - start

        def local(as_numpy: bool) -> float:
            state = {k: (v + 1e-6).numpy() if as_numpy else v + 1e-6 for k, v in weights.items()}
            start = time.perf_counter()
            ray.get(ray.put(state))
            return time.perf_counter() - start

        def pool_of(n: int) -> SamplerPool:
            view = copy.copy(pool)  # the pool's own broadcast over its first n actors; the others stay idle
            view.actors = pool.actors[:n]
            return view

        sides = {"raw": lambda: publish(lambda ref, v, checksum: [receiver.fetch.remote([ref])]),
                 "raw_local": lambda: local(False), "raw_local_numpy": lambda: local(True),
                 **{f"samplers_{n}": lambda n=n: publish(
                    lambda ref, v, checksum: pool_of(n).broadcast_weights(ref, v, checksum))
                    for n in counts}}
        alternate(sides, 1)  # warm-up: first calls pay for connections and imports
        return alternate(sides, rounds)


def measure(ctx: BenchContext) -> dict[str, dict]:
    counts = (1, 2) if ctx.quick else (1, 2, 4, 8)
    cfg = ctx.config(f"sampler.num_actors={max(counts)}", "sampler.num_cpus=0.2")
    policy = Policy.from_pretrained(cfg.policy, adapters=(OLD,))
    weights = policy.get_weights(OLD)  # the real θ_old LoRA layout
    payload = sum(v.numel() * v.element_size() for v in weights.values())
    apply_cost = apply_seconds(policy, weights, 3 if ctx.quick else 10)
    del policy
    seconds = publish_seconds(cfg, weights, counts, 2 if ctx.quick else 9)
    per_n = {n: Spread.of(ratios(seconds[f"samplers_{n}"], seconds["raw"])) for n in counts}
    flatness = per_n[max(counts)].median / per_n[min(counts)].median
    numpy_gain = Spread.of(seconds["raw_local"]).median / Spread.of(seconds["raw_local_numpy"]).median
    rows = [[f"{n} sampler{'s' if n > 1 else ''}: broadcast / raw put+get", spread_text(per_n[n], "×")]
            for n in counts]
    rows += [[f"{max(counts)} vs {min(counts)} samplers (flatness)", f"{flatness:.2f}×"],
             ["θ_old payload", f"{payload / 2**10:,.0f} KiB ({len(weights)} tensors)"],
             ["raw put + get by another process (context)", spread_text(Spread.of(seconds["raw"]), " ms", 1e3, 1)],
             ["raw put + get in one process (context)", spread_text(Spread.of(seconds["raw_local"]), " ms", 1e3, 1)],
             ["the same, as numpy arrays (Ray's zero-copy path; context)",
              spread_text(Spread.of(seconds["raw_local_numpy"]), " ms", 1e3, 1)],
             ["per sampler, in one process: unpickle + Policy.load_weights (context)",
              f"{apply_cost['unpickle'].median * 1e3:.1f} ms + {apply_cost['load_weights'].median * 1e3:.1f} ms"],
             ["plain copy_ into θ_old's parameters, no key checks (context: the floor of applying)",
              f"{apply_cost['copy_'].median * 1e3:.2f} ms"],
             *[[f"{n} sampler(s) publish→applied (context)", spread_text(Spread.of(seconds[f"samplers_{n}"]), " ms",
                                                                          1e3, 1)] for n in counts]]
    return {"broadcast": {
        "what": (f"Real Sampler actors of the tiny policy ({max(counts)} built, {cfg.sampler.num_cpus} CPU each, "
                 "idle); publish→applied = from the start of ray.put of θ_old to the latest `load_weights` return time "
                 "(wall clocks of one machine). Baseline: ray.put here + ray.get in one light actor."),
        "config": {"samplers": list(counts), "payload_bytes": payload, "tensors": len(weights),
                   "lora_rank": cfg.policy.lora.rank},
        "latency_s": {name: Spread.of(v).as_dict() for name, v in seconds.items()},
        "apply_s": {name: s.as_dict() for name, s in apply_cost.items()},
        "figures": {"over_raw": {str(n): s.as_dict() for n, s in per_n.items()}, "flatness": flatness},
        "rows": rows,
        # judged where each sampler has a core of its own, as on a node with a device per sampler
        "targets": [*[target(f"broadcast to {n} sampler{'s' if n > 1 else ''} (own cores) / raw put+get",
                             per_n[n].median, 1.5, at_most=True) for n in counts if n <= (os.cpu_count() or 1)],
                    target(f"flatness: {max(counts)} vs {min(counts)} samplers", flatness, 1.25, at_most=True)],
        "notes": [f"Each sampler unpickles the state and loads it into θ_old on receipt (the per-sampler row), plus "
                  f"its share of the RPC. {max(counts)} sampler processes share {os.cpu_count()} cores here, so that "
                  f"work queues: at best ⌈{max(counts)}/{os.cpu_count()}⌉ = {-(-max(counts) // os.cpu_count())}× the "
                  "one-sampler latency, more when other processes hold the cores. With a core per sampler (any GPU "
                  "node) the fan-out runs in parallel and the object store serves every reader from one copy.",
                  f"In one process, put + get of the state as {len(weights)} torch tensors takes {numpy_gain:.1f}× "
                  "as long as the same bytes as numpy arrays, which Ray passes zero-copy: the learner publishes "
                  "numpy arrays (Learner.publish), as this bench does, and every Sampler also checksums the θ_old "
                  "it applied (SHA-256 of the LoRA bytes) for the driver's verification."],
    }}
