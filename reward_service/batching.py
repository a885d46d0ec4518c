"""Per-scorer batching of the reward server, and its Prometheus metrics.

Each scorer runs on its own thread, one call at a time; requests that queue meanwhile are merged (same image size,
at most max_batch images) and their scores split back. A failed merged call is retried request by request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from reward_service.protocol import Scores, checked_scores
from reward_service.scorers import Scorer

log = logging.getLogger(__name__)


class ServerMetrics:
    """Prometheus metrics of one app, in its own registry so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nft_reward_requests", "score requests per scorer and HTTP status ('none' = rejected "
                                "before the scorers were known)", ["scorer", "status"], registry=r)
        self.request_seconds = Histogram("nft_reward_request_seconds", "seconds per accepted score request",
                                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.images = Counter("nft_reward_images", "images scored", ["scorer"], registry=r)
        self.failed_images = Counter("nft_reward_failed_images", "images a scorer returned None for", ["scorer"],
                                     registry=r)
        self.batch_size = Histogram("nft_reward_batch_size", "images per scorer call, after merging requests",
                                    ["scorer"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.batch_seconds = Histogram("nft_reward_batch_seconds", "seconds per scorer call", ["scorer"], registry=r)
        self.queue_images = Gauge("nft_reward_queue_images", "images waiting for their scorer", ["scorer"], registry=r)

    def count(self, scorers: Sequence[str], status: int) -> None:
        for name in scorers:
            self.requests.labels(name, str(status)).inc()


@dataclass
class _Job:
    images: np.ndarray  # (n, H, W, 3) uint8
    prompts: list[str]
    metadata: list[dict[str, Any]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _settle(job: _Job, result: Scores | None = None, error: BaseException | None = None) -> None:
    """Hand a result from the scorer thread to the request waiting on the event loop."""
    def settle() -> None:
        if job.future.done():  # the request was cancelled (client went away)
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    if not job.loop.is_closed():
        job.loop.call_soon_threadsafe(settle)


class BatchingScorer:
    """Runs one scorer on its own thread, one call at a time, so a GPU model is never used concurrently.
    Requests that queue while it is busy are merged into one call of at most max_batch images of one size."""

    def __init__(self, scorer: Scorer, max_batch: int, metrics: ServerMetrics) -> None:
        self.scorer, self.name, self.max_batch, self._metrics = scorer, scorer.name, max_batch, metrics
        self._pending: list[_Job] = []
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"scorer-{self.name}", daemon=True)
        self._thread.start()

    async def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict[str, Any]]) -> Scores:
        loop = asyncio.get_running_loop()
        job = _Job(images, prompts, metadata, loop.create_future(), loop)
        with self._wakeup:
            if self._closed:
                raise RuntimeError(f"scorer {self.name!r} is shutting down; retry on another replica")
            self._pending.append(job)
            self._metrics.queue_images.labels(self.name).inc(len(images))
            self._wakeup.notify()
        return await job.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the queued jobs, then stop the thread."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join(timeout_s)

    def _take_batch(self) -> list[_Job] | None:
        with self._wakeup:
            while not self._pending and not self._closed:
                self._wakeup.wait()
            if not self._pending:
                return None
            shape = self._pending[0].images.shape[1:]
            batch, rest, size = [], [], 0
            for job in self._pending:  # first come first served; jobs that do not fit wait for the next call
                if job.images.shape[1:] == shape and size + len(job.images) <= self.max_batch:
                    batch.append(job)
                    size += len(job.images)
                else:
                    rest.append(job)
            self._pending = rest
            self._metrics.queue_images.labels(self.name).dec(size)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            self._score_batch([job for job in batch if not job.future.done()])

    def _score_batch(self, batch: list[_Job]) -> None:
        if not batch:
            return
        try:
            per_job = self._call(batch)
        except Exception as e:  # noqa: BLE001 -- handed to the waiting request, which answers 422 or 500
            if len(batch) == 1:
                _settle(batch[0], error=e)
                return
            # One request's bad input must not fail the requests merged with it: score each alone.
            for job in batch:
                self._score_batch([job])
            return
        for job, scores in zip(batch, per_job, strict=True):
            _settle(job, result=scores)

    def _call(self, batch: list[_Job]) -> list[Scores]:
        images = np.concatenate([job.images for job in batch]) if len(batch) > 1 else batch[0].images
        prompts = [p for job in batch for p in job.prompts]
        metadata = [m for job in batch for m in job.metadata]
        start = time.perf_counter()
        scores = checked_scores(self.name, self.scorer.score(images, prompts, metadata), len(images))
        self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - start)
        self._metrics.batch_size.labels(self.name).observe(len(images))
        self._metrics.images.labels(self.name).inc(len(images))
        self._metrics.failed_images.labels(self.name).inc(sum(v is None for v in scores[self.name]))
        per_job, offset = [], 0
        for job in batch:
            end = offset + len(job.images)
            per_job.append({key: values[offset:end] for key, values in scores.items()})
            offset = end
        return per_job
