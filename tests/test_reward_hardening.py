"""Findings of a black-box review of the reward service, each with the request that showed it, against a real
uvicorn server: unbounded prompts, decoded-pixel blow-up in a small body, input echoed in errors, 405 without
Allow, /metrics documented as JSON."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from reward_service.protocol import MAX_PROMPT_CHARS, encode_images
from reward_service.replica import ServerThread
from reward_service.server import MAX_ERROR_CHARS, create_app


class EchoingScorer:
    """Rejects every prompt, quoting it whole in its error, as a careless scorer might."""

    name = "echo"

    def score(self, images, prompts, metadata):
        raise ValueError(f"cannot score prompt {prompts[0]!r}")


@pytest.fixture(scope="module")
def served():
    server = ServerThread(create_app({"echo": EchoingScorer()}, max_request_pixels=8 * 1024 * 1024))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
    server.stop()


def png_base64(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, format="PNG", optimize=True)  # black: compresses to ~KiB
    return base64.b64encode(buffer.getvalue()).decode()


def test_overlong_prompt_is_refused_fast_without_echo(served):
    prompt = 'a sign that reads "' + "A" * (4 * 2**20) + '"'  # 4 MiB quoted OCR target
    start = time.perf_counter()
    answer = served.post("/v1/score", json={"prompts": [prompt], "images": encode_images(np.zeros((1, 8, 8, 3),
                                                                                                    np.uint8))})
    assert answer.status_code == 422 and time.perf_counter() - start < 5
    assert f"at most {MAX_PROMPT_CHARS} characters" in answer.json()["error"] and len(answer.content) < 3000


def test_decoded_pixels_are_capped_per_request(served):
    body = {"prompts": ["x"] * 32, "images": [png_base64(2048)] * 32}  # 32 × 2048² black PNGs: a small body
    assert len(str(body)) < 2 * 2**20
    answer = served.post("/v1/score", json=body)
    assert answer.status_code == 413
    assert "over max_request_pixels (8388608)" in answer.json()["error"]


def test_errors_never_echo_large_input(served):
    prompt = "b" * MAX_PROMPT_CHARS  # allowed length; the scorer quotes it whole
    answer = served.post("/v1/score", json={"prompts": [prompt], "images": encode_images(np.zeros((1, 8, 8, 3),
                                                                                                    np.uint8))})
    assert answer.status_code == 422
    message = answer.json()["error"]
    assert len(message) <= MAX_ERROR_CHARS + 40 and message.endswith("characters cut)")


def test_405_names_the_allowed_method(served):
    answer = served.get("/v1/score")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert "error" in answer.json()


def test_metrics_is_documented_as_text(served):
    content = served.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in content and "application/json" not in content
    assert served.get("/metrics").headers["content-type"].startswith("text/plain")
