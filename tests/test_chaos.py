"""A chaos run on the multi-node test cluster (tests/cluster.py): 30 updates with 2 learner ranks while a seeded random
schedule SIGKILLs Sampler, reward replica and learner rank processes. Ray restarts the Samplers and the replicas, the
LearnerGroup replaces its ranks; at the end every group drawn is accounted for, none was trained or scored twice, and
the learner ranks hold identical weights."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import pytest

from tests.cluster import descendants

pytestmark = pytest.mark.slow

NUM_UPDATES = 30
ACTOR_CLASS = {"sampler": "Sampler", "reward": "RewardReplica", "learner": "Learner"}


def kill_plan(seed: int = 0) -> list[tuple[int, str]]:
    """(update after which to kill, role): two of each role at distinct random updates, in random order."""
    rng = random.Random(seed)
    roles = ["sampler", "sampler", "reward", "reward", "learner", "learner"]
    rng.shuffle(roles)
    return list(zip(sorted(rng.sample(range(3, NUM_UPDATES - 4), len(roles))), roles, strict=True))


def actor_processes(cluster, role: str) -> list[int]:
    """PIDs of the cluster's live actor processes of a role: `ray::Class` when idle, `ray::Class.method` when busy."""
    ours = {pid for node in cluster.nodes.values() for pid in descendants(node.pid)}
    pattern = re.compile(rf"ray::{ACTOR_CLASS[role]}(\.|\s|$)")
    found = []
    for line in subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if int(pid) in ours and pattern.match(args):
            found.append(int(pid))
    return found


def test_random_kills_lose_and_repeat_nothing(cluster, run):
    rng = random.Random(1)
    training = run("chaos", f"run.num_updates={NUM_UPDATES}", "learner.num_ranks=2", "learner.micro_batch_size=2",
                   timeout_s=900)
    killed = {"sampler": 0, "reward": 0, "learner": 0}
    for after, role in kill_plan():
        training.wait_for(f"update {after}", lambda n=after: len(training.records("update")) >= n)
        deadline = time.monotonic() + 120  # a process killed before may still be restarting
        while not (pids := actor_processes(cluster, role)):
            assert time.monotonic() < deadline, f"no live {role} process in 120 s:\n{training.output()[-4000:]}"
            time.sleep(0.5)
        os.kill(rng.choice(pids), signal.SIGKILL)
        killed[role] += 1
        print(f"killed a {role} process after update {after}")
    training.finish()

    updates = training.records("update")
    assert [u["step"] for u in updates] == list(range(1, NUM_UPDATES + 1))
    trained = [index for u in updates for index in u["groups"]]
    assert len(trained) == 2 * NUM_UPDATES and len(set(trained)) == len(trained), trained  # never trained twice
    final = training.records("final")[0]
    print({k: final[k] for k in ("prompt_position", "trained_groups", "stale_groups", "failed_groups",
                                 "overflow_groups", "buffered_groups", "inflight_groups", "scored_groups",
                                 "rescored_groups", "sampler_restarts", "resubmitted_groups", "learner_recoveries",
                                 "reward_url_refreshes", "reward_request_failures", "reward_retries")})
    assert final["trained_groups"] == len(trained)
    # every group drawn from the prompt stream is trained, dropped (and counted) or still buffered or in flight
    assert final["prompt_position"] == sum(final[k] for k in (
        "trained_groups", "stale_groups", "failed_groups", "overflow_groups", "buffered_groups", "inflight_groups"))
    assert final["rescored_groups"] == 0 and final["scored_groups"] >= len(trained)
    assert final["scoring_failed_groups"] == final["failed_groups"] == 0  # the other replica took every request
    assert final["learner_recoveries"] == killed["learner"] == 2
    assert training.output().count("learner: a rank died") == 2
    # a Sampler killed again while Ray is still restarting it dies once as far as the pool can see
    assert 1 <= final["sampler_restarts"] <= killed["sampler"] and final["dead_samplers"] == 0
    assert final["reward_url_refreshes"] >= 1  # the restarted replicas were found at their new addresses
    checksums = final["learner_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # the rebuilt ranks are in step
    assert final["unverified_broadcasts"] == 0
