"""UnifiedReward: a VLM served by sglang rates each image 1-5 through the OpenAI-compatible chat API;
score = the number after "Final Score:" / 5. An unparsable answer or a request that keeps failing gives None (a
failure counted upstream, never a default score). deploy/sglang/launch_unifiedreward.sh starts the server.
Catalogue of scorers: docs/architecture.md, 'Reward scorers'.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from PIL import Image

from reward_service.scorers import Scores

log = logging.getLogger(__name__)

BASE_URL = "http://127.0.0.1:30000/v1"  # sglang's default port
MODEL = "UnifiedReward-7b-v1.5"  # the launch script's --served-model-name
IMAGE_SIDE = 512
MAX_TOKENS = 1024  # room for the model's short rationale before its final score
RETRY_STATUS = {429, 500, 502, 503, 504}  # overload and server errors; other 4xx are our mistakes, not retried
FINAL_SCORE = re.compile(r"Final Score:\s*\**\s*(\d+(?:\.\d+)?)")

# The pointwise template UnifiedReward was trained on (caption, two criteria, 1-5 after "Final Score:");
# its answers are only calibrated for this layout.
QUESTION = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n"
    "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the "
    "accuracy of depicted objects, their relationships, and attributes as described in the caption.\n"
    "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, "
    "color accuracy, and overall aesthetic appeal.\n"
    "Based on the above criteria, assign a score from 1 to 5 after 'Final Score:'.\n"
    "Your task is provided as follows:\nText Caption: [{prompt}]"
)


def image_data_url(image: np.ndarray) -> str:
    """(H, W, 3) uint8 → PNG data URL of the image resized to IMAGE_SIDE², as the reference sends it."""
    buffer = io.BytesIO()
    Image.fromarray(image).resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_request(model: str, image: np.ndarray, prompt: str) -> dict[str, Any]:
    """One user message: the image part, then the question about it; greedy decoding."""
    content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}},
               {"type": "text", "text": QUESTION.format(prompt=prompt)}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0.0,
            "max_tokens": MAX_TOKENS}


def parse_score(answer: str) -> float | None:
    """The last "Final Score: x" with 1 ≤ x ≤ 5, divided by 5; None when there is none."""
    found = FINAL_SCORE.findall(answer)
    if not found or not 1.0 <= float(found[-1]) <= 5.0:
        return None
    return float(found[-1]) / 5.0


class UnifiedRewardScorer:
    name = "unifiedreward"

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float, max_retries: int,
                 concurrency: int, backoff_s: float) -> None:
        self.model, self.max_retries, self.backoff_s = model, max_retries, backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="unifiedreward")

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        futures = [self.pool.submit(self.rate, image, prompt) for image, prompt in zip(images, prompts, strict=True)]
        return {self.name: [future.result() for future in futures]}

    def rate(self, image: np.ndarray, prompt: str) -> float | None:
        answer = self.ask(chat_request(self.model, image, prompt))
        if answer is None:
            return None
        score = parse_score(answer)
        if score is None:
            log.warning("unifiedreward: no 'Final Score: <1-5>' in the answer %r", answer[-200:])
        return score

    def ask(self, body: dict[str, Any]) -> str | None:
        """The answer's text, or None after max_retries retries (exponential backoff with jitter)."""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            try:
                response = self.client.post("chat/completions", json=body)
            except httpx.TransportError as error:  # refused, reset, timed out: the server may come back
                problem = f"{type(error).__name__}: {error}"
                continue
            if response.status_code == 200:
                try:
                    content = response.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    content = None
                if not isinstance(content, str):
                    log.warning("unifiedreward: not a chat completion with text: %r", response.text[:200])
                    return None
                return content
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in RETRY_STATUS:
                break
        log.warning("unifiedreward: POST %schat/completions failed after %d tries, last %s; is the sglang server up "
                    "(deploy/sglang/launch_unifiedreward.sh)?", self.client.base_url, attempt + 1, problem)
        return None

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


def build(**options: str) -> UnifiedRewardScorer:
    """Options (strings, RewardConfig.scorer_args): base_url, model, api_key, timeout_s, max_retries, concurrency,
    backoff_s (seconds before the first retry; doubled each retry, jittered ×0.5-1.5)."""
    allowed = {"base_url", "model", "api_key", "timeout_s", "max_retries", "concurrency", "backoff_s"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unifiedreward has no options {unknown}; it takes {', '.join(sorted(allowed))}")
    timeout_s, backoff_s = float(options.get("timeout_s", 120.0)), float(options.get("backoff_s", 1.0))
    max_retries, concurrency = int(options.get("max_retries", 3)), int(options.get("concurrency", 16))
    if timeout_s <= 0 or backoff_s < 0 or max_retries < 0 or concurrency < 1:
        raise ValueError(f"unifiedreward needs timeout_s > 0 ({timeout_s}), backoff_s >= 0 ({backoff_s}), "
                         f"max_retries >= 0 ({max_retries}) and concurrency >= 1 ({concurrency})")
    return UnifiedRewardScorer(base_url=options.get("base_url", BASE_URL), model=options.get("model", MODEL),
                               api_key=options.get("api_key") or None, timeout_s=timeout_s, max_retries=max_retries,
                               concurrency=concurrency, backoff_s=backoff_s)
