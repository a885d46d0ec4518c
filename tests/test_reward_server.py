"""The reward server over real HTTP: scores, Bearer auth, limits, JSON errors, batching, metrics, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from reward_service.protocol import encode_images
from reward_service.replica import ServerThread
from reward_service.scorers.jpeg import JpegCompressibility
from reward_service.server import create_app

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = dict(max_body_bytes=200_000, max_batch=8, max_image_side=64)


class MeanScorer:
    """Scores an image by its mean pixel, so a merged batch that splits wrongly shows; records its batch sizes."""

    name = "mean"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.batch_sizes = delay_s, []
        self._busy = threading.Lock()

    def score(self, images, prompts, metadata):
        assert self._busy.acquire(blocking=False), "scorer used concurrently"
        try:
            time.sleep(self.delay_s)
            self.batch_sizes.append(len(images))
            if "reject me" in prompts:
                raise ValueError("prompt 'reject me' is not scorable")
            if "crash me" in prompts:
                raise RuntimeError("model exploded")
            means = [None if p == "fail me" else float(im.mean()) for im, p in zip(images, prompts, strict=True)]
            return {"mean": means, "mean_reported": [1.0] * len(images)}
        finally:
            self._busy.release()


def images_of(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)  # (N, H, W, 3)


def body_of(images: np.ndarray, prompt: str = "a red circle", **extra) -> dict:
    return {"prompts": [prompt] * len(images), "images": encode_images(images), **extra}


@pytest.fixture(scope="module")
def served():
    mean = MeanScorer(delay_s=0.05)
    server = ServerThread(create_app({"jpeg_compressibility": JpegCompressibility(), "mean": mean},
                                     api_key=KEY, **LIMITS))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http, mean
    server.stop()


def test_scores_every_served_scorer_by_default(served):
    http, _ = served
    images = images_of(3)
    response = http.post("/v1/score", json=body_of(images), headers=AUTH)
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    expected = JpegCompressibility().score(images, ["a red circle"] * 3, [{}] * 3)["jpeg_compressibility"]
    assert scores["jpeg_compressibility"] == pytest.approx(expected)
    assert scores["mean"] == pytest.approx([float(im.mean()) for im in images])
    assert scores["mean_reported"] == [1.0, 1.0, 1.0]
    assert response.json()["elapsed_s"] >= 0


def test_scores_only_the_requested_scorers_and_passes_failures_as_null(served):
    http, _ = served
    body = body_of(images_of(2), scorers=["mean"])
    body["prompts"][1] = "fail me"
    scores = http.post("/v1/score", json=body, headers=AUTH).json()["scores"]
    assert set(scores) == {"mean", "mean_reported"}
    assert scores["mean"][1] is None


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
                         ids=["no-key", "wrong-key", "not-bearer"])
def test_score_needs_the_api_key(served, headers):
    http, _ = served
    for response in (http.post("/v1/score", json=body_of(images_of(1)), headers=headers),
                     http.get("/v1/scorers", headers=headers)):
        assert response.status_code == 401
        assert "API key" in response.json()["error"]
    assert http.get("/healthz").json()["status"] == "ok"  # probes carry no key


def test_body_over_the_limit_is_413_naming_the_limit(served):
    http, _ = served
    big = body_of(images_of(1), prompt="x" * 300_000)
    response = http.post("/v1/score", json=big, headers=AUTH)
    assert response.status_code == 413 and "max_body_bytes (200000" in response.json()["error"]

    def chunks():  # chunked transfer: no Content-Length to check up front
        yield b'{"prompts": ["'
        for _ in range(50):
            yield b"y" * 10_000

    response = http.post("/v1/score", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["error"]


@pytest.mark.parametrize("images, limit", [(images_of(9, side=4), "max_batch (8)"),
                                           (images_of(1, side=65), "max_image_side (64")],
                         ids=["batch", "image-side"])
def test_batch_and_image_limits_are_413_naming_the_limit(served, images, limit):
    http, _ = served
    response = http.post("/v1/score", json=body_of(images), headers=AUTH)
    assert response.status_code == 413 and limit in response.json()["error"]


@pytest.mark.parametrize("change, named", [
    (lambda b: b.update(prompts=["a"]), "prompts"),
    (lambda b: b.update(metadata=[{}] * 5), "metadata"),
    (lambda b: b["images"].__setitem__(0, "not base64!"), "image 0"),
    (lambda b: b["images"].__setitem__(1, "aGVsbG8="), "image 1 is not a readable image"),
    (lambda b: b["images"].__setitem__(1, encode_images(images_of(1, side=8))[0]), "one size"),
    (lambda b: b.update(scorers=["pickscore"]), "unknown scorer(s) ['pickscore']"),
    (lambda b: b.update(prompts=[1, 2]), "prompts.0"),
    (lambda b: b.update(surprise=True), "surprise"),
], ids=["prompt-count", "metadata-count", "base64", "not-png", "mixed-sizes", "unknown-scorer", "types", "extra-key"])
def test_bad_input_is_422_naming_the_problem(served, change, named):
    http, _ = served
    body = body_of(images_of(2))
    change(body)
    response = http.post("/v1/score", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert named in response.json()["error"]


def test_scorer_value_error_is_422_and_a_crash_is_500_and_the_server_lives_on(served):
    http, _ = served
    rejected = http.post("/v1/score", json=body_of(images_of(1), prompt="reject me"), headers=AUTH)
    assert rejected.status_code == 422 and "'mean' rejected the input" in rejected.json()["error"]
    crashed = http.post("/v1/score", json=body_of(images_of(1), prompt="crash me"), headers=AUTH)
    assert crashed.status_code == 500 and "model exploded" in crashed.json()["error"]
    assert http.post("/v1/score", json=body_of(images_of(1)), headers=AUTH).status_code == 200


def test_concurrent_requests_are_merged_up_to_max_batch_and_split_back(served):
    http, mean = served
    mean.batch_sizes.clear()
    bodies = [body_of(images_of(3, seed=i), scorers=["mean"]) for i in range(8)]
    results: dict[int, httpx.Response] = {}

    def post(i: int) -> None:
        results[i] = http.post("/v1/score", json=bodies[i], headers=AUTH)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(8):  # each request gets its own images' scores back
        assert results[i].json()["scores"]["mean"] == pytest.approx([float(im.mean()) for im in images_of(3, seed=i)])
    assert sum(mean.batch_sizes) == 24 and max(mean.batch_sizes) <= 8
    assert len(mean.batch_sizes) < 8, f"no request was merged: {mean.batch_sizes}"


def test_a_bad_request_merged_with_good_ones_fails_alone(served):
    http, _ = served
    prompts = ["ok", "reject me", "ok"]
    results: dict[int, httpx.Response] = {}

    def post(i: int) -> None:
        results[i] = http.post("/v1/score", json=body_of(images_of(2, seed=i), prompt=prompts[i], scorers=["mean"]),
                               headers=AUTH)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [results[i].status_code for i in range(3)] == [200, 422, 200]


def test_metrics_count_requests_images_and_batches(served):
    http, _ = served
    http.post("/v1/score", json=body_of(images_of(2)), headers=AUTH)
    http.post("/v1/score", json=body_of(images_of(1)))  # 401
    text = http.get("/metrics").text
    assert 'nft_reward_requests_total{scorer="jpeg_compressibility",status="200"}' in text
    assert 'nft_reward_requests_total{scorer="none",status="401"}' in text
    for name in ("nft_reward_images_total", "nft_reward_batch_size_bucket", "nft_reward_request_seconds_count",
                 "nft_reward_failed_images_total", "nft_reward_queue_images"):
        assert name in text


def test_scorers_endpoint_and_openapi(served):
    http, _ = served
    listed = http.get("/v1/scorers", headers=AUTH).json()
    assert listed == {"scorers": ["jpeg_compressibility", "mean"], "max_batch": 8, "max_image_side": 64,
                      "max_body_bytes": 200_000, "max_request_pixels": 64 * 1024 * 1024, "max_prompt_chars": 4096}
    assert "/v1/score" in http.get("/openapi.json").json()["paths"]
    assert http.get("/nowhere").json() == {"error": "Not Found"}


def test_several_apps_live_in_one_process():
    first = create_app({"mean": MeanScorer()})
    second = create_app({"mean": MeanScorer()})  # a shared default registry would raise "Duplicated timeseries"
    assert first is not second


def test_cli_refuses_an_unset_api_key_variable():
    env = {k: v for k, v in os.environ.items() if k != "NFT_TEST_UNSET_KEY"}
    done = subprocess.run([sys.executable, "-m", "reward_service.server", "--scorers", "jpeg_compressibility",
                           "--port", "0", "--api-key-env", "NFT_TEST_UNSET_KEY"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "NFT_TEST_UNSET_KEY" in done.stderr
