"""A real multi-node Ray cluster on this machine: a head and one `ray start` node per node group of the manifests
(sampler, learner, two reward nodes), each offering its group's custom resource. Short runs of `python -m deploy.train`
against it place every role on its own group and move objects between nodes; then a sampler node and a reward node
are lost mid-run (their raylets killed) and replaced, and the run recovers without training any group twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
ROLE_RESOURCE = {"sampler": "nft_sampler", "learner": "nft_learner", "reward": "nft_reward"}
# the manifests' overrides: each role asks for its group's resource
PLACED = [f"{role}.resources.{resource}=1" for role, resource in ROLE_RESOURCE.items()]
RUN = ["prompts.group_size=4", "schedule.groups_per_update=2", "schedule.buffer_capacity=8",
       "schedule.max_policy_lag=1", "schedule.max_inflight=2",  # Samplers always busy: a lost node has calls on it
       "learner.micro_batch_size=8", "learner.num_threads=1", "sampler.num_actors=2", "sampler.groups_per_call=1",
       "sampler.num_steps=4", "sampler.timeout_s=150", "reward.replicas=2", "eval.every=0", "eval.num_prompts=2",
       "eval.num_steps=2", "eval.in_distribution_images_per_prompt=0", "run.grid_every=0", "run.progress=false",
       "policy.lora.rank=4", "policy.lora.alpha=8", "run.checkpoint_every=0"]
RUN_TIMEOUT_S = 300


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        below = children.get(stack.pop(), [])
        found += below
        stack += below
    return found


class LocalCluster:
    """`ray start --block` processes on 127.0.0.1 with their own temp dir and ports (never the machine's other
    Ray); each node is one process group, so killing it kills that node's raylet and agents and nothing else."""

    def __init__(self, root: Path):
        self.root, self.nodes = root, {}
        self.temp_dir = tempfile.mkdtemp(prefix="nft-mn-", dir="/tmp")  # short: Ray's unix sockets live under it
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "disabled", "RAY_metrics_report_interval_ms": "1000",
                    # a killed raylet is declared dead within ~10 s, not the default ~30 s
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                    "RAY_health_check_failure_threshold": "5"}
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port, self.metrics_ports = free_ports(1)[0], {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self, name: str, resources: dict[str, float], *, head: bool = False, timeout_s: float = 120) -> None:
        """A node offering `resources`, plus `at_<name>` so the test can tell nodes of one group apart; returns once
        it runs. Every port is given (nodes started together race for the ones Ray would pick)."""
        resources = {**resources, f"at_{name}": 1}
        manager, objects, agent, agent_grpc, runtime_env, metrics, client = free_ports(7)
        args = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                f"--node-manager-port={manager}", f"--object-manager-port={objects}",
                f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}", "--num-cpus=1",
                f"--resources={json.dumps(resources)}"]
        args += ["--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                 f"--ray-client-server-port={client}"] if head else [f"--address={self.address}"]
        log_path = self.root / f"{name}.log"
        self.nodes[name] = subprocess.Popen(args, env=self.env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.metrics_ports[name] = metrics
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in log_path.read_text():
            assert self.nodes[name].poll() is None, f"node {name} exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"node {name} not up in {timeout_s:.0f} s:\n{log_path.read_text()}"
            time.sleep(0.5)

    def kill(self, name: str) -> None:
        """Lose a node as a machine is lost: SIGKILL its raylet, agents and actor workers (descendants of its
        `ray start`, which Ray puts in process groups of their own) at once."""
        node = self.nodes.pop(name)
        for pid in [node.pid, *descendants(node.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone
        node.wait(timeout=30)

    def shutdown(self) -> None:
        for name in sorted(self.nodes, key=lambda n: n == "head"):  # the head last
            self.kill(name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """head (driver, GroupScorer), one node per role's group, two reward nodes (one replica each)."""
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        nodes.start("head", {}, head=True)
        for name, resources in [("learner", {"nft_learner": 1}), ("sampler", {"nft_sampler": 2}),
                                ("reward_a", {"nft_reward": 1}), ("reward_b", {"nft_reward": 1})]:
            nodes.start(name, resources)
        yield nodes
    finally:
        nodes.shutdown()


class Run:
    """`python -m deploy.train` as a cluster job would run it (RAY_ADDRESS set), watched through its files."""

    def __init__(self, cluster: LocalCluster, out: Path, name: str, args: list[str]):
        self.dir, self.log_path = out / name, out / f"{name}.out"
        command = [sys.executable, "-m", "deploy.train", "configs/tiny_cpu.yaml", f"run.output_dir={out}",
                   f"run.name={name}", *PLACED, *RUN, *args]
        self.process = subprocess.Popen(command, cwd=REPO, env={**cluster.env, "RAY_ADDRESS": cluster.address},
                                        stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.start = time.monotonic()

    def records(self, kind: str) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, what: str, ready, timeout_s: float = RUN_TIMEOUT_S) -> float:
        """Seconds until `ready()` holds; fails with the run's output if it exits or times out first."""
        start = time.monotonic()
        while not ready():
            assert self.process.poll() is None or ready(), f"run exited before {what}:\n{self.output()[-6000:]}"
            assert time.monotonic() - start < timeout_s, f"no {what} in {timeout_s:.0f} s:\n{self.output()[-6000:]}"
            time.sleep(0.2)
        return time.monotonic() - start

    def finish(self) -> None:
        try:
            self.process.wait(timeout=max(1, RUN_TIMEOUT_S - (time.monotonic() - self.start)))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"run did not finish in {RUN_TIMEOUT_S} s:\n{self.output()[-6000:]}") from None
        assert self.process.returncode == 0, self.output()[-6000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def run(cluster, tmp_path):
    runs = []

    def start(name: str, *args: str) -> Run:
        runs.append(Run(cluster, tmp_path, name, list(args)))
        return runs[-1]

    yield start
    for started in runs:
        started.kill()


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


def check_trained_once(updates: list[dict], num_updates: int, groups_per_update: int = 2) -> None:
    assert [u["step"] for u in updates] == list(range(1, num_updates + 1))
    trained = [index for u in updates for index in u["groups"]]
    assert len(trained) == num_updates * groups_per_update and len(set(trained)) == len(trained), trained


def test_roles_run_on_their_node_groups(cluster, run):
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
    while not all(received_chunks(cluster.metrics_ports[node]) > 0 for node in ("learner", "sampler")):
        assert time.monotonic() < deadline, {n: received_chunks(cluster.metrics_ports[n]) for n in cluster.nodes}
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
    cluster.start("sampler", {"nft_sampler": 2})
    said = training.wait_for("word of the lost reward replica",
                             lambda: re.search(r"reward replicas \[0\] are being restarted .*'nft_reward': 1",
                                               training.output()), 180)
    print(f"lost reward replica reported {said:.1f} s after the new sampler node")
    cluster.start(reward_node, {"nft_reward": 1})
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
