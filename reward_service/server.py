"""The reward server: a FastAPI app that scores images with its scorers (POST /v1/score), batching per scorer.

Without make: `.venv/bin/python -m reward_service.server --scorers jpeg_compressibility --port 8001 [--host 0.0.0.0]
[--api-key-env VAR] [--scorer-arg pickscore.model=/ckpt]`; then `curl 127.0.0.1:8001/v1/scorers`, docs at /docs.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import socket
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from reward_service.batching import BatchingScorer, ServerMetrics
from reward_service.protocol import (
    MAX_PROMPT_CHARS,
    ErrorResponse,
    ImageTooLargeError,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
    Scores,
    decode_images,
)
from reward_service.scorers import Scorer, build_scorer

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 128 * 2**20  # 64 images of 512x512 as base64 PNG stay under ~70 MiB
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_IMAGE_SIDE = 2048
DEFAULT_MAX_REQUEST_PIXELS = 64 * 1024 * 1024  # decoded pixels per request: 64 images of 1024², ~200 MB as uint8
MAX_ERROR_CHARS = 1000  # an error message never carries more than this (it must not echo large input back)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + f"… ({len(message) - MAX_ERROR_CHARS} characters cut)"
    return JSONResponse(ErrorResponse(error=message).model_dump(), status_code=status, headers=headers)


class RequestGuard:
    """ASGI middleware at the edge: Bearer key on /v1/* and the body size limit, before any parsing.
    /healthz and /metrics stay open: probes and Prometheus scrapes carry no key, and neither exposes data."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, metrics: ServerMetrics) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.expected_auth = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected_auth and scope["path"].startswith("/v1/") and not hmac.compare_digest(
                headers.get(b"authorization", b""), self.expected_auth):
            self.metrics.count(["none"], 401)
            response = _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                              {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        too_large = _error(413, f"request body exceeds max_body_bytes ({self.max_body_bytes} bytes); "
                                "send fewer or smaller images per request")
        declared = headers.get(b"content-length", b"0")  # the HTTP parser has already refused a non-number
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            self.metrics.count(["none"], 413)
            return await too_large(scope, receive, send)
        # Read the body here (chunked bodies carry no Content-Length) and replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                self.metrics.count(["none"], 413)
                return await too_large(scope, receive, send)
        unread = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict:
            return unread.pop() if unread else await receive()

        await self.app(scope, replay, send)


def _reject(metrics: ServerMetrics, status: int, message: str, names: Sequence[str] = ("none",),
            headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.count(names, status)
    return _error(status, message, headers)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Every error answer is ErrorResponse JSON, counted under scorer 'none'."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name each problem by location; never echo the input back (it may be megabytes of base64).
        problems = [f"{'.'.join(map(str, e.get('loc', ()))) or 'body'}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()[:5]]
        content_type = request.headers.get("content-type", "")
        hint = "" if "json" in content_type else f" (Content-Type {content_type or 'missing'}: send application/json)"
        return _reject(metrics, 422, "invalid request: " + "; ".join(problems)[:2000] + hint)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _reject(metrics, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))  # e.g. Allow


def _score_endpoint(batchers: dict[str, BatchingScorer], metrics: ServerMetrics, max_batch: int, max_image_side: int,
                    max_request_pixels: int):
    """POST /v1/score: check scorers and limits, decode off the loop, run every scorer, merge their scores."""

    async def score(request: ScoreRequest) -> ScoreResponse | JSONResponse:
        start = time.perf_counter()
        names = request.scorers or list(batchers)
        unknown = sorted(set(names) - set(batchers))
        if unknown:
            return _reject(metrics, 422, f"unknown scorer(s) {unknown}; this replica serves {sorted(batchers)} "
                                         "(GET /v1/scorers)")
        if len(set(names)) != len(names):
            return _reject(metrics, 422, f"scorers {names} repeat a name; name each scorer once", sorted(set(names)))
        if len(request.images) > max_batch:
            return _reject(metrics, 413, f"batch of {len(request.images)} images exceeds max_batch ({max_batch}); "
                                         "split it", names)
        try:
            images = await run_in_threadpool(decode_images, request.images, max_image_side,
                                             max_request_pixels)  # (N, H, W, 3)
        except ImageTooLargeError as e:
            return _reject(metrics, 413, str(e), names)
        except ValueError as e:
            return _reject(metrics, 422, str(e), names)
        results = await asyncio.gather(
            *(batchers[n].score(images, request.prompts, request.metadata) for n in names), return_exceptions=True)
        scores: Scores = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, ValueError):
                return _reject(metrics, 422, f"scorer {name!r} rejected the input: {result}", names)
            if isinstance(result, BaseException):
                log.error("scorer %r failed", name, exc_info=result)
                return _reject(metrics, 500, f"scorer {name!r} failed: {type(result).__name__}: {result}", names)
            scores.update(result)
        elapsed = time.perf_counter() - start
        metrics.request_seconds.observe(elapsed)
        metrics.count(names, 200)
        return ScoreResponse(scores=scores, elapsed_s=elapsed)

    return score


def create_app(scorers: dict[str, Scorer], *, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
               max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
               max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> FastAPI:
    """The reward API: POST /v1/score, GET /v1/scorers, /healthz, /metrics, OpenAPI at /docs.

    Protocol in docs/architecture.md, 'Reward-server HTTP protocol'.
    """
    if not scorers:
        raise ValueError("create_app needs at least one scorer, e.g. {'jpeg_compressibility': jpeg.build()}")
    metrics = ServerMetrics()
    batchers = {name: BatchingScorer(scorer, max_batch, metrics) for name, scorer in scorers.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for batcher in batchers.values():
            batcher.close()

    app = FastAPI(title="diffusion-nft reward service", lifespan=lifespan,
                  responses={code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 500)})
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics)
    _add_error_handlers(app, metrics)
    app.post("/v1/score", response_model=ScoreResponse)(
        _score_endpoint(batchers, metrics, max_batch, max_image_side, max_request_pixels))

    @app.get("/v1/scorers", response_model=ScorersResponse)
    async def list_scorers() -> ScorersResponse:
        return ScorersResponse(scorers=sorted(batchers), max_batch=max_batch, max_image_side=max_image_side,
                               max_body_bytes=max_body_bytes, max_request_pixels=max_request_pixels,
                               max_prompt_chars=MAX_PROMPT_CHARS)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "scorers": sorted(batchers)}

    @app.get("/metrics", response_class=Response,
             responses={200: {"description": "Prometheus text exposition", "content": {"text/plain": {}}}})
    async def metrics_text() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def build_scorers(names: Sequence[str], scorer_args: dict[str, dict[str, str]]) -> dict[str, Scorer]:
    """Build each named scorer with its options from `scorer_args` (RewardConfig.scorer_args)."""
    stray = sorted(set(scorer_args) - set(names))
    if stray:
        raise ValueError(f"scorer options given for {stray}, which are not served (scorers: {list(names)})")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"scorers {list(names)}: name each served scorer once, e.g. shapes,jpeg_compressibility")
    return {name: build_scorer(name, **scorer_args.get(name, {})) for name in names}


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn; binding here (port 0 = any free port) lets the caller learn the port first."""
    # proto=IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections; with proto 0 every small
    # answer waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def parse_scorer_args(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """['pickscore.model=/ckpt', ...] -> {'pickscore': {'model': '/ckpt'}}."""
    parsed: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        scorer, dot, option = key.partition(".")
        if not (sep and dot and scorer and option):
            raise ValueError(f"--scorer-arg {item!r} is not of the form scorer.key=value (e.g. pickscore.model=/ckpt)")
        parsed.setdefault(scorer, {})[option] = value
    return parsed


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorers", required=True, help="comma-separated, e.g. shapes,jpeg_compressibility")
    parser.add_argument("--port", type=int, required=True, help="TCP port; 0 = any free port (printed at start)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 serves beyond this machine")
    parser.add_argument("--api-key-env", help="environment variable holding the Bearer key required on /v1/*")
    parser.add_argument("--scorer-arg", action="append", default=[], help="scorer.key=value, repeatable")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="images per request at most")
    parser.add_argument("--max-image-side", type=int, default=DEFAULT_MAX_IMAGE_SIDE, help="pixels, width or height")
    parser.add_argument("--max-request-pixels", type=int, default=DEFAULT_MAX_REQUEST_PIXELS,
                        help="decoded pixels per request at most, all images together")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request (noise at scale)")
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        scorers = build_scorers([n.strip() for n in args.scorers.split(",") if n.strip()],
                                parse_scorer_args(args.scorer_arg))
    except ValueError as e:
        parser.error(str(e))
    app = create_app(scorers, api_key=api_key, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                     max_image_side=args.max_image_side, max_request_pixels=args.max_request_pixels)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"reward server listening on http://{shown}:{port} serving {sorted(scorers)}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
