"""A real multi-node Ray cluster on this machine for the tests (tests/test_multinode.py, tests/test_chaos.py): a head
and one `ray start --block` node per node group of the manifests (sampler, learner, two reward nodes), each offering
its group's custom resource, and `python -m deploy.train` runs against it as a cluster job would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ports import free_ports

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
ROLE_RESOURCE = {"sampler": "nft_sampler", "learner": "nft_learner", "reward": "nft_reward"}
# the manifests' overrides: each role asks for its group's resource
PLACED = [f"{role}.resources.{resource}=1" for role, resource in ROLE_RESOURCE.items()]
RUN = ["prompts.group_size=4", "schedule.groups_per_update=2", "schedule.buffer_capacity=8",
       "schedule.max_policy_lag=1", "schedule.max_inflight=2",  # Samplers always busy: a lost node has calls on it
       "learner.micro_batch_size=4", "learner.num_threads=1", "sampler.num_actors=2", "sampler.groups_per_call=1",
       "sampler.num_steps=4", "sampler.timeout_s=150", "reward.replicas=2", "eval.every=0", "eval.num_prompts=2",
       "eval.num_steps=2", "eval.in_distribution_images_per_prompt=0", "run.grid_every=0", "run.progress=false",
       "policy.lora.rank=4", "policy.lora.alpha=8", "run.checkpoint_every=0"]
RUN_TIMEOUT_S = 300  # a run's default limit; Run(timeout_s=...) sets another
# the nodes besides the head: a learner node (room for 2 ranks), a sampler node, two reward nodes (one replica each)
NODES = {"learner": {"nft_learner": 2}, "sampler": {"nft_sampler": 2}, "reward_a": {"nft_reward": 1},
         "reward_b": {"nft_reward": 1}}


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

    def start_missing(self) -> None:
        """Start each of NODES that is not running (never started, or lost and not replaced)."""
        for name, resources in NODES.items():
            if name not in self.nodes:
                self.start(name, resources)

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


class Run:
    """`python -m deploy.train` as a cluster job would run it (RAY_ADDRESS set), watched through its files."""

    def __init__(self, cluster: LocalCluster, out: Path, name: str, args: list[str],
                 timeout_s: float = RUN_TIMEOUT_S):
        self.dir, self.log_path = out / name, out / f"{name}.out"
        command = [sys.executable, "-m", "deploy.train", "configs/tiny_cpu.yaml", f"run.output_dir={out}",
                   f"run.name={name}", *PLACED, *RUN, *args]
        self.process = subprocess.Popen(command, cwd=REPO, env={**cluster.env, "RAY_ADDRESS": cluster.address},
                                        stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.start, self.timeout_s = time.monotonic(), timeout_s

    def records(self, kind: str) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, what: str, ready, timeout_s: float | None = None) -> float:
        """Seconds until `ready()` holds; fails with the run's output if it exits or times out first."""
        start, timeout_s = time.monotonic(), timeout_s or self.timeout_s
        while not ready():
            assert self.process.poll() is None or ready(), f"run exited before {what}:\n{self.output()[-6000:]}"
            assert time.monotonic() - start < timeout_s, f"no {what} in {timeout_s:.0f} s:\n{self.output()[-6000:]}"
            time.sleep(0.2)
        return time.monotonic() - start

    def finish(self) -> None:
        try:
            self.process.wait(timeout=max(1, self.timeout_s - (time.monotonic() - self.start)))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"run did not finish in {self.timeout_s:.0f} s:\n{self.output()[-6000:]}") from None
        assert self.process.returncode == 0, self.output()[-6000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
