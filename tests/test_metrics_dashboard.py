"""The Grafana dashboard against a real Prometheus: a short run of the tiny config on its own local Ray, scraped with
deploy/prometheus/prometheus.yml's jobs (paths pointed at the test's files), and every dashboard query returns data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ports import free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
RATE_WINDOW = "30s"  # stands in for Grafana's $__rate_interval (scrapes every 1 s here)
RUN_TIMEOUT_S = 300


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy/grafana/dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def prometheus_config(tmp: Path, output_dir: Path) -> Path:
    """The committed config, scraping every second; its file_sd paths point at this test's files."""
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ray", "nft-run"}, f"the test knows the jobs ray and nft-run, the config has {set(jobs)}"
    # No cluster here: the run starts its own Ray and lists its agent in the run's file; an empty cluster file
    # keeps any other Ray on this machine out of the data.
    (tmp / "ray_sd.json").write_text("[]")
    jobs["ray"]["file_sd_configs"][0]["files"] = [str(tmp / "ray_sd.json")]
    (output_dir / "prometheus_targets").mkdir(parents=True)  # exists before Prometheus starts watching it
    jobs["nft-run"]["file_sd_configs"][0]["files"] = [str(output_dir / "prometheus_targets" / "*.json")]
    jobs["nft-run"]["file_sd_configs"][0]["refresh_interval"] = "1s"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(config: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        assert process.poll() is None, f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}"
        time.sleep(0.2)
    process.terminate()
    raise TimeoutError(f"prometheus not ready in 30 s: {(tmp / 'prometheus.log').read_text()[-2000:]}")


def has_data(url: str, query: str) -> bool:
    """True when the instant query returns at least one finite sample now."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query.replace("$__rate_interval", RATE_WINDOW)},
                       timeout=10).json()
    assert answer["status"] == "success", f"{query}: {answer}"
    return any(math.isfinite(float(sample["value"][1])) for sample in answer["data"]["result"])


def train_command(policy: str, output_dir: Path) -> list[str]:
    return [sys.executable, "-m", "deploy.train", "configs/tiny_cpu.yaml", f"policy.pretrained={policy}",
            f"run.output_dir={output_dir}", "run.name=metrics", "run.num_updates=5", "run.progress=false",
            "run.grid_every=0", "run.checkpoint_every=0", "eval.every=0", "eval.num_prompts=2", "eval.num_steps=2",
            "schedule.groups_per_update=4", "learner.timestep_fraction=0.2", "learner.micro_batch_size=16"]


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is absent (Debian: apt-get install prometheus; "
                    "`make test` installs it when run as root)")
def test_every_dashboard_query_returns_data(tiny_pipeline, tmp_path):
    queries = dashboard_queries()
    output_dir = tmp_path / "runs"
    prometheus, url = start_prometheus(prometheus_config(tmp_path, output_dir), tmp_path)
    log = open(tmp_path / "train.log", "w")
    run = subprocess.Popen(train_command(tiny_pipeline, output_dir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    missing = set(queries)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while missing and run.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
            missing = {query for query in missing if not has_data(url, query)}
        if run.poll() is None and missing:
            pytest.fail(f"the run did not finish within {RUN_TIMEOUT_S} s; queries without data: {sorted(missing)}")
        assert run.wait(timeout=RUN_TIMEOUT_S) == 0, f"training failed:\n{(tmp_path / 'train.log').read_text()[-4000:]}"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
            run.wait(timeout=60)
        prometheus.terminate()
        prometheus.wait(timeout=30)
    targets = json.loads((output_dir / "prometheus_targets" / "metrics.json").read_text())[0]["targets"]
    assert len(targets) == 2, f"one reward replica and the run's Ray metrics agent, got {targets}"
    assert not missing, (f"dashboard queries that returned no data during the run: {sorted(missing)}\n"
                         f"prometheus log: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
