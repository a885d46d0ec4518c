"""RewardClient: scores images on reward replicas over HTTP. Balances by outstanding requests, retries a failed
request on another replica with backoff and jitter, counts every failure, and raises `RewardError` rather than
ever answering with a default score.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np
from pydantic import ValidationError

from configs.schema import RewardConfig
from reward_service.protocol import ScoreRequest, ScoreResponse, Scores, encode_images

MAX_BACKOFF_S = 10.0  # a retry never waits longer than this, however many came before


class RewardError(RuntimeError):
    """Scoring failed: a replica rejected the request (4xx), or every attempt failed. Names replicas and the cause."""


class _RetryableError(Exception):
    """One attempt failed in a way another replica may not (connect error, timeout, 5xx, garbled answer)."""


@dataclass
class ReplicaStats:
    requests: int = 0  # HTTP attempts sent to this replica
    failures: int = 0  # attempts that failed, whatever the cause
    outstanding: int = 0  # attempts in flight now
    latency_s_sum: float = 0.0  # seconds of the successful attempts
    last_error: str = ""
    down_until: float = 0.0  # time.monotonic(); after a failure the replica is picked last until then


class RewardClient:
    """`await client.score(images, prompts, metadata)` -> {scorer key: [score or None per image]}.

    None is the scorer's own verdict that it failed on that image (the sample is dropped upstream); a request that
    fails is never turned into scores. Use one client per process; it is picklable (a copy starts with fresh stats).
    """

    def __init__(self, urls: Sequence[str], *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 3, max_batch: int = 64, backoff_s: float = 0.2, connect_timeout_s: float = 5.0,
                 cooldown_s: float = 5.0) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        if not self.urls or len(set(self.urls)) != len(self.urls):
            raise ValueError(f"RewardClient needs distinct reward server URLs, got {list(urls)}")
        if max_batch < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError(f"max_batch ({max_batch}) >= 1, max_retries ({max_retries}) >= 0, "
                             f"timeout_s ({timeout_s}) > 0 are required")
        self._options = dict(api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, max_batch=max_batch,
                             backoff_s=backoff_s, connect_timeout_s=connect_timeout_s, cooldown_s=cooldown_s)
        self.max_retries, self.max_batch = max_retries, max_batch
        self.backoff_s, self.cooldown_s = backoff_s, cooldown_s
        self._timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._replicas = {url: ReplicaStats() for url in self.urls}
        self._totals = {"retries": 0, "errors": 0, "images": 0}
        self._lock = threading.Lock()
        # httpx connections belong to the event loop that opened them: one AsyncClient per loop.
        self._http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = \
            weakref.WeakKeyDictionary()

    @classmethod
    def from_config(cls, cfg: RewardConfig, urls: Sequence[str] = ()) -> RewardClient:
        """A client for `urls` (the Ray replicas' `url()`), or for cfg.urls when none are given, speaking
        `cfg.protocol`: ours, or the Flow-GRPO GenEval server's (reward_service/flow_grpo_geneval.py)."""
        kind = cls
        if cfg.protocol == "flow_grpo_geneval":
            from reward_service.flow_grpo_geneval import FlowGrpoGenevalClient as kind
        return kind(list(urls) or list(cfg.urls), api_key=cfg.api_key, timeout_s=cfg.timeout_s,
                    max_retries=cfg.max_retries, max_batch=cfg.max_batch)

    def set_urls(self, urls: Sequence[str]) -> None:
        """Send from now on to `urls` (a replica restarted by Ray serves on a new port); stats of old URLs stay."""
        urls = [url.rstrip("/") for url in urls]
        if not urls or len(set(urls)) != len(urls):
            raise ValueError(f"RewardClient needs distinct reward server URLs, got {list(urls)}")
        with self._lock:
            for url in urls:
                self._replicas.setdefault(url, ReplicaStats())
            self.urls = urls

    def __getstate__(self) -> dict[str, Any]:
        return {"urls": self.urls, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["urls"], **state["options"])

    async def score(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None,
                    scorers: Sequence[str] | None = None) -> Scores:
        """images (N, H, W, 3) uint8, split into requests of at most max_batch images, sent concurrently."""
        n = len(images)
        metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or n == 0:
            raise ValueError(f"images must be a non-empty (N, H, W, 3) uint8 array, got {images.shape} {images.dtype}")
        if len(prompts) != n or len(metadata) != n:
            raise ValueError(f"{n} images need {n} prompts and metadata dicts, got {len(prompts)} and {len(metadata)}")
        chunks = [slice(i, i + self.max_batch) for i in range(0, n, self.max_batch)]
        tasks = [asyncio.ensure_future(self._score_chunk(images[c], list(prompts[c]), metadata[c], scorers))
                 for c in chunks]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one chunk failed: the others' scores are useless, stop spending on them
                task.cancel()
            raise
        keys = set(results[0])
        if any(set(result) != keys for result in results):
            raise RewardError(f"replicas answered with different score keys {[sorted(r) for r in results]}: "
                              f"serve the same scorers on every replica of {self.urls}")
        return {key: [v for result in results for v in result[key]] for key in results[0]}

    def score_sync(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None,
                   scorers: Sequence[str] | None = None) -> Scores:
        """`score` for synchronous callers (scripts, evaluation); inside an event loop, await `score`."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running: the one case where asyncio.run is allowed
        else:
            raise RuntimeError("RewardClient.score_sync called inside a running event loop: await client.score(...)")

        async def run() -> Scores:
            try:
                return await self.score(images, prompts, metadata, scorers)
            finally:
                await self.aclose()

        return asyncio.run(run())

    async def check_health(self, timeout_s: float = 10.0) -> dict[str, list[str]]:
        """GET /healthz on every replica at once -> {url: scorers served}; RewardError naming each bad one."""
        http = self._client()

        async def probe(url: str) -> list[str] | str:
            with self._lock:
                self._replicas[url].requests += 1
            try:
                response = await asyncio.wait_for(http.get(f"{url}/healthz", timeout=timeout_s), timeout_s)
                if response.status_code == 200:
                    return list(response.json()["scorers"])
                error = f"HTTP {response.status_code}"
            except (httpx.TransportError, asyncio.TimeoutError) as e:
                error = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__} after {timeout_s:g} s"
            except (ValueError, KeyError) as e:
                error = f"unreadable /healthz answer ({e})"
            self._count_failure(url, error, retryable=True)
            return error

        answers = dict(zip(self.urls, await asyncio.gather(*(probe(url) for url in self.urls)), strict=True))
        bad = {url: answer for url, answer in answers.items() if isinstance(answer, str)}
        if bad:
            raise RewardError("reward replicas not healthy: " + "; ".join(f"{u} ({e})" for u, e in bad.items())
                              + ". Check that they run and that this node can reach them.")
        return answers

    def stats(self) -> dict[str, Any]:
        """Counters for metrics. requests/failures: HTTP calls (health probes included) and those that failed;
        retries: attempts after a request's first; errors: RewardErrors raised; images: images scored;
        latency_s_sum: seconds of successful score calls. `per_url` holds the same per replica, plus outstanding."""
        with self._lock:
            per_url = {url: asdict(s) for url, s in self._replicas.items()}
            totals = dict(self._totals)
        for s in per_url.values():
            del s["down_until"]
        return {"requests": sum(s["requests"] for s in per_url.values()),
                "failures": sum(s["failures"] for s in per_url.values()),
                "latency_s_sum": sum(s["latency_s_sum"] for s in per_url.values()), **totals, "per_url": per_url}

    async def aclose(self) -> None:
        """Close this event loop's connections."""
        http = self._http.pop(asyncio.get_running_loop(), None)
        if http is not None:
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if loop not in self._http:
            self._http[loop] = httpx.AsyncClient(timeout=self._timeout, headers=self._headers)
        return self._http[loop]

    async def _score_chunk(self, images: np.ndarray, prompts: list[str], metadata: list[dict],
                           scorers: Sequence[str] | None) -> Scores:
        content = await asyncio.to_thread(self._encode, images, prompts, metadata, scorers)  # CPU work: off the loop
        tried: list[str] = []
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self._totals["retries"] += 1
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.5))
            url = self._reserve(tried)
            tried.append(url)
            try:
                scores = await self._post(url, content, len(images), scorers)
            except _RetryableError as e:
                last_error = f"{url}: {e}"
                continue
            except RewardError:
                with self._lock:
                    self._totals["errors"] += 1
                raise
            with self._lock:
                self._totals["images"] += len(images)
            return scores
        with self._lock:
            self._totals["errors"] += 1
        raise RewardError(f"scoring {len(images)} images failed after {len(tried)} attempts on {tried} (replicas: "
                          f"{self.urls}); last error: {last_error}")

    def _reserve(self, tried: list[str]) -> str:
        """The replica for the next attempt: untried first, then healthy, then fewest outstanding, then least used."""
        now = time.monotonic()
        with self._lock:
            candidates = [url for url in self.urls if url not in tried] or self.urls
            url = min(candidates, key=lambda u: (self._replicas[u].down_until > now, self._replicas[u].outstanding,
                                                 self._replicas[u].requests))
            self._replicas[url].requests += 1
            self._replicas[url].outstanding += 1
        return url

    def _encode(self, images: np.ndarray, prompts: list[str], metadata: list[dict],
                scorers: Sequence[str] | None) -> bytes:
        """The request body of one chunk: our protocol's JSON with PNG images."""
        request = ScoreRequest(prompts=prompts, metadata=metadata, images=encode_images(images),
                               scorers=list(scorers) if scorers is not None else None)
        return request.model_dump_json().encode()

    def _decode(self, content: bytes) -> Scores:
        """Scores from a 200 answer's body; ValidationError/ValueError when it is not one."""
        return ScoreResponse.model_validate_json(content).scores

    SCORE_PATH = "/v1/score"

    async def _post(self, url: str, content: bytes, n: int, scorers: Sequence[str] | None) -> Scores:
        start = time.monotonic()
        try:
            response = await self._client().post(f"{url}{self.SCORE_PATH}", content=content)
        except httpx.TransportError as e:  # connect errors, timeouts, connections dropped mid-request
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise _RetryableError(self._count_failure(url, error, retryable=True)) from e
        finally:
            with self._lock:
                self._replicas[url].outstanding -= 1
        if response.status_code >= 500:
            raise _RetryableError(self._count_failure(url, f"HTTP {response.status_code}: {_error_text(response)}",
                                                      retryable=True))
        if response.status_code != 200:
            error = self._count_failure(url, f"HTTP {response.status_code}: {_error_text(response)}", retryable=False)
            raise RewardError(f"{url} rejected the score request ({error}); not retried: every replica would")
        try:
            scores = self._decode(response.content)
            missing = sorted(set(scorers or ()) - set(scores))
            if missing or any(len(values) != n for values in scores.values()):
                raise ValueError(f"answer lacks scorers {missing} or holds other than {n} values per key")
        except (ValidationError, ValueError) as e:
            raise _RetryableError(self._count_failure(url, f"unusable answer: {e}", retryable=True)) from e
        with self._lock:
            self._replicas[url].latency_s_sum += time.monotonic() - start
            self._replicas[url].down_until = 0.0
        return scores

    def _count_failure(self, url: str, error: str, *, retryable: bool) -> str:
        with self._lock:
            stats = self._replicas[url]
            stats.failures += 1
            stats.last_error = error
            if retryable:  # the replica, not the request, is at fault: let the others take the load for a while
                stats.down_until = time.monotonic() + self.cooldown_s
        return error


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])[:500]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or "empty body"
