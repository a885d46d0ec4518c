"""A real multi-node Ray cluster on this machine: a head and one `ray start` node per node group of the manifests
(sampler, learner, two reward nodes), each offering its group's custom resource. Short runs of `python -m deploy.train`
against it place every role on its own group and move objects between nodes; then a sampler node and a reward node
are lost mid-run (their raylets killed) and replaced, and the run recovers without training any group twice.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.cluster import NODES

pytestmark = pytest.mark.slow

def groups_of(placement: dict) -> dict[str, list[str]]:
    """role -> the node group (its nft_* resource) of each of its actors' nodes ('head' for none)."""
    resources = placement["node_resources"]
    return {role: [next((r for r in resources[node] if r.startswith("nft_")), "head") for node in nodes]
            for role, nodes in placement["nodes"].items()}


def node_named(placement: dict, name: str) -> str:
    return next(node for node, resources in placement["node_resources"].items() if f"at_{name}" in resources)


def received_chunks(port: int) -> float:
    """Object chunks this node's object manager received from other nodes (Ray's own metric, summed)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ray_object_manager_received_chunks{") and 'Type="Total"' in line)


def settled_chunks(cluster, nodes: tuple[str, ...]) -> dict[str, float]:
    """received_chunks per node once two readings 2 s apart agree (exports of an earlier run have arrived)."""
    last = None
    for _ in range(15):
        now = {node: received_chunks(cluster.metrics_ports[node]) for node in nodes}
        if now == last:
            return now
        last = now
        time.sleep(2)
    raise AssertionError(f"object-manager counters still moving after 30 s: {last}")


def check_trained_once(updates: list[dict], num_updates: int, groups_per_update: int = 2) -> None:
    assert [u["step"] for u in updates] == list(range(1, num_updates + 1))
    trained = [index for u in updates for index in u["groups"]]
    assert len(trained) == num_updates * groups_per_update and len(set(trained)) == len(trained), trained


def test_roles_run_on_their_node_groups(cluster, run):
    before = settled_chunks(cluster, ("learner", "sampler"))  # what the cluster's earlier runs moved
    training = run("placed", "run.num_updates=2")
    training.finish()
    start, end = training.records("placement")
    for placement in (start, end):
        assert groups_of(placement) == {"driver": ["head"], "scorer": ["head"], "reward": ["nft_reward"] * 2,
                                        "learner": ["nft_learner"], "sampler": ["nft_sampler"] * 2}, placement
    assert len(set(start["nodes"]["reward"])) == 2  # one replica per reward node
    updates = training.records("update")
    check_trained_once(updates, 2)
    # Samplers' images went to the head's GroupScorer, its training groups to the learner node, θ_old back to the
    # sampler node (verified there against the learner's checksum): Ray's object managers moved the objects.
    assert updates[-1]["verified_broadcasts"] >= 2
    deadline = time.monotonic() + 30  # Ray's agents export every second here
    while not all(received_chunks(cluster.metrics_ports[node]) > before[node] for node in before):
        assert time.monotonic() < deadline, (before, {n: received_chunks(cluster.metrics_ports[n]) for n in before})
        time.sleep(1)


def test_lost_sampler_and_reward_nodes(cluster, run):
    """The sampler node and the node of reward replica 0 die together mid-run, calls in flight on both. The run says
    which resource the Samplers wait for; a new sampler node (as KubeRay or the cluster launcher would bring one)
    takes them and their groups are resubmitted. Scoring fails over to the other replica at once; the lost replica
    says it waits for a node with nft_reward and serves again from a new reward node. No group is trained twice."""
    training = run("nodes_lost", "run.num_updates=8")
    training.wait_for("update 1", lambda: training.records("update"))
    placement = training.records("placement")[0]
    replica_node = placement["nodes"]["reward"][0]
    lost = {*placement["nodes"]["sampler"], replica_node}
    reward_node = next(n for n in ("reward_a", "reward_b") if node_named(placement, n) == replica_node)
    cluster.kill("sampler")
    cluster.kill(reward_node)
    said = training.wait_for("word of the lost Samplers",
                             lambda: re.search(r"Sampler \d lost .*'nft_sampler': 1", training.output()), 60)
    print(f"lost Samplers reported {said:.1f} s after the kill")
    cluster.start("sampler", NODES["sampler"])
    said = training.wait_for("word of the lost reward replica",
                             lambda: re.search(r"reward replicas \[0\] are being restarted .*'nft_reward': 1",
                                               training.output()), 180)
    print(f"lost reward replica reported {said:.1f} s after the new sampler node")
    cluster.start(reward_node, NODES[reward_node])
    training.finish()

    output = training.output()
    assert re.search(r"Sampler \d is back after", output) and "reward replicas now serve at" in output
    end = training.records("placement")[-1]
    assert groups_of(end)["sampler"] == ["nft_sampler"] * 2 and groups_of(end)["reward"] == ["nft_reward"] * 2
    assert not set(end["nodes"]["sampler"] + end["nodes"]["reward"]) & lost, (lost, end)
    check_trained_once(training.records("update"), 8)
    final = training.records("final")[0]  # the fault totals, counted to the end of the run
    print({k: final[k] for k in ("resubmitted_groups", "sampler_restarts", "dead_samplers", "stale_groups",
                                 "reward_url_refreshes", "reward_request_failures", "reward_retries",
                                 "scoring_failed_groups", "failed_groups")})
    assert final["sampler_restarts"] == 2 and final["dead_samplers"] == 0 and final["resubmitted_groups"] >= 1
    # requests to the lost replica failed and were retried on the other: no group was lost to scoring
    assert final["reward_request_failures"] >= 1 and final["scoring_failed_groups"] == final["failed_groups"] == 0
    assert final["reward_url_refreshes"] >= 1 and final["unverified_broadcasts"] == 0
