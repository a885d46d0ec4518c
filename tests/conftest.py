"""Shared fixtures: a random-weight tiny policy on disk, the shapes prompt sets, a local Ray cluster."""

from __future__ import annotations

import os

import pytest
import torch

from tests.cluster import RUN_TIMEOUT_S, LocalCluster, Run

torch.set_num_threads(1)  # 2 cores shared by Ray actors and the test process


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> str:
    """A tiny SD3-architecture pipeline (random weights) over the shapes vocabulary, saved once per session."""
    from actors.shapes_world import VOCABULARY
    from actors.tiny_policy import create_tiny_pipeline

    return str(create_tiny_pipeline(tmp_path_factory.mktemp("tiny_policy"), list(VOCABULARY)))


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray cluster on this machine, shared by the tests that need one."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    """The tests on the multi-node cluster run last and together, so one cluster serves them all and no other test
    shares the cores with its idle nodes."""
    items.sort(key=lambda item: "cluster" in getattr(item, "fixturenames", ()))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One multi-node cluster (tests/cluster.py) for every test that asks for one: head (driver, GroupScorer), a
    learner node (room for 2 ranks), a sampler node, two reward nodes (one replica each)."""
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        nodes.start("head", {}, head=True)
        nodes.start_missing()
        yield nodes
    finally:
        nodes.shutdown()


@pytest.fixture
def run(cluster, tmp_path):
    cluster.start_missing()  # a node an earlier test lost and, failing, did not replace
    runs = []

    def start(name: str, *args: str, timeout_s: float = RUN_TIMEOUT_S) -> Run:
        runs.append(Run(cluster, tmp_path, name, list(args), timeout_s=timeout_s))
        return runs[-1]

    yield start
    for started in runs:
        started.kill()
