"""`ray job submit --working-dir . -- python -m deploy.train CONFIG` against a real head (`ray start --head` on
127.0.0.1 with ports and a temp dir of its own): a short tiny run SUCCEEDS and leaves its metrics and checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster import descendants
from tests.ports import free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_TIMEOUT_S = 360
UPLOAD_LIMIT_MIB = 20  # the code, presets and prompt sets; .venv, .git, runs and caches stay home


def ray_env() -> dict[str, str]:
    """The venv first on PATH (the job's `python`), and one token for the head and the CLI (Ray's token auth)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def ray_head(tmp_path):
    """A head with its dashboard (the job API) on 127.0.0.1; stopped by signalling only the processes it started."""
    env = ray_env()
    gcs, dashboard, agent, client = free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="nft-ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}", "--num-cpus=2",
         f"--temp-dir={temp_dir}"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while not dashboard_answers(address, env):
            assert head.poll() is None, f"ray start exited:\n{(tmp_path / 'head.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no dashboard in 120 s:\n{(tmp_path / 'head.log').read_text()[-3000:]}"
            time.sleep(1)
        yield address, env, Path(temp_dir)
    finally:
        # SIGKILL the head and everything it started (Ray gives its workers process groups of their own): a graceful
        # `ray stop` on SIGTERM took 30 s here and is not what this test is about.
        for pid in [head.pid, *descendants(head.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def dashboard_answers(address: str, env: dict[str, str]) -> bool:
    try:
        response = httpx.get(f"{address}/api/version", timeout=2,
                             headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    except httpx.TransportError:
        return False
    return response.status_code == 200


def job_api(address: str, env: dict[str, str], path: str) -> dict:
    """The job REST API the CLI uses (JSON rather than the CLI's coloured text)."""
    response = httpx.get(f"{address}/api/jobs/{path}", timeout=30,
                         headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    response.raise_for_status()
    return response.json()


def submit(address: str, env: dict[str, str], entrypoint: list[str], attempts: int = 20) -> str:
    """`ray job submit --no-wait`; the head's job agent registers a few seconds after its dashboard answers."""
    for _ in range(attempts):
        submitted = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".", "--no-wait",
                                    "--", *entrypoint], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        output = submitted.stdout + submitted.stderr
        if submitted.returncode == 0 or "No available agent to submit job" not in output:
            break
        time.sleep(3)
    assert submitted.returncode == 0, output
    return output


def test_job_submit_runs_training(ray_head, tiny_pipeline, tmp_path):
    address, env, temp_dir = ray_head
    output_dir = tmp_path / "runs"
    output = submit(address, env, [
        "python", "-m", "deploy.train", "configs/tiny_cpu.yaml", f"policy.pretrained={tiny_pipeline}",
        f"run.output_dir={output_dir}", "run.name=job", "run.num_updates=2", "run.progress=false", "run.grid_every=0",
        "eval.every=0", "eval.num_prompts=2", "eval.num_steps=2", "schedule.groups_per_update=4",
        "learner.timestep_fraction=0.2", "learner.micro_batch_size=16", "sampler.num_actors=1"])
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", output).group(1)

    start, status = time.monotonic(), "PENDING"
    while status in ("PENDING", "RUNNING") and time.monotonic() - start < JOB_TIMEOUT_S:
        time.sleep(3)
        status = job_api(address, env, job_id)["status"]
    logs = job_api(address, env, f"{job_id}/logs")["logs"]
    assert status == "SUCCEEDED", f"job {job_id}: {status} after {time.monotonic() - start:.0f} s\n{logs[-6000:]}"

    run_dir = output_dir / "job"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "update"]
    assert [r["step"] for r in updates] == [1, 2]
    checkpoint = run_dir / "checkpoints" / "step_00002"
    assert (checkpoint / "theta" / "pytorch_lora_weights.safetensors").is_file(), sorted(run_dir.rglob("*"))
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2

    package = re.search(r"gcs://(_ray_pkg_\w+)\.zip", output).group(1)
    unpacked = next(temp_dir.glob(f"session_*/runtime_resources/working_dir_files/{package}"))
    files = [p for p in unpacked.rglob("*") if p.is_file()]
    assert not any(part in (".git", ".venv", "runs", "tests") for p in files for part in p.relative_to(unpacked).parts)
    mib = sum(p.stat().st_size for p in files) / 2**20
    assert mib < UPLOAD_LIMIT_MIB, f"--working-dir . uploads {mib:.1f} MiB; exclude more in .rayignore"
