"""The FastAPI application: OpenAI's chat and text completion routes, models, health and metrics.

The engine loads in a thread after the server starts listening (``/health`` answers 503
until it is ready). Each completion request is validated, turned into prompt ids and a
config (``params``), queued (``worker``) and answered whole or as server-sent events in
OpenAI's chunk format, ending with ``data: [DONE]``. Every response carries the
generation's speculative statistics in an extra ``specexec`` field (in the last chunk when
streaming).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ..errors import SpecExecError
from .errors import APIError, install_handlers
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .params import Limits, prepare
from .schemas import ChatCompletionRequest, CompletionRequest
from .responses import ResponseFormat
from .worker import Delta, EngineWorker, Failed, Finished, Job, QueueFull, Started

log = logging.getLogger("specexec.server")


@dataclass
class ServerSettings:
    model_name: str = "embedded"
    max_queue: int = 16  # requests waiting for the engine; more are refused with 429
    request_timeout: float = 300.0  # seconds from arrival: queue wait (503 past it) plus generation (cut at it)
    max_prompt_tokens: int | None = None  # None: the target's context less one
    max_tokens: int = 4096  # most new tokens one request may ask for
    api_key: str | None = None
    on_load_error: Callable[[str], None] | None = None
    on_ready: Callable[[], None] | None = None


class _State:
    def __init__(self):
        self.engine = None
        self.worker: EngineWorker | None = None
        self.tokenizer = None
        self.load_error: str | None = None


ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")


class _CountRequests:
    """ASGI middleware counting answered ``/v1`` requests by endpoint and status (streams untouched)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                path = scope["path"] if scope["path"] in ROUTES else "other"
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, counting_send)


def create_app(settings: ServerSettings, load_engine: Callable[[], object]) -> FastAPI:
    """An app serving the engine ``load_engine()`` returns (called in a thread at startup)."""
    state = _State()
    metrics = ServerMetrics()

    def load():
        try:
            engine = load_engine()
            state.tokenizer = copy.deepcopy(engine.tokenizer)  # the request side's own copy (threads)
            state.worker = EngineWorker(engine, metrics, settings.max_queue)
            state.engine = engine
        except Exception as err:  # noqa: BLE001 - reported on /health and by the command, not as a traceback
            state.load_error = str(err) if isinstance(err, SpecExecError) else f"{type(err).__name__}: {err}"
            if settings.on_load_error:
                settings.on_load_error(state.load_error)
            return
        if settings.on_ready:
            settings.on_ready()

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load, name="specexec-load", daemon=True).start()
        yield
        if state.worker:
            state.worker.shutdown()

    app = FastAPI(title="specexec", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.specexec = state
    install_handlers(app)
    app.add_middleware(_CountRequests, metrics=metrics)

    tokenizer_lock = threading.Lock()  # the request side's tokenizer, used off the event loop one at a time

    def prepare_locked(body, chat: bool, engine, limits: Limits):
        with tokenizer_lock:
            return prepare(body, chat=chat, engine=engine, tokenizer=state.tokenizer, base=engine.config,
                           limits=limits)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        given, wanted = key.strip().encode("latin-1", "replace"), settings.api_key.encode("utf-8", "replace")  # raw header bytes
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, wanted):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                           "invalid_request_error", None, "invalid_api_key")

    def ready_engine():
        if state.engine is None:
            if state.load_error:
                raise APIError(503, f"the model failed to load: {state.load_error}", "server_error")
            raise APIError(503, "the model is still loading; retry shortly", "server_error", None, "loading",
                           {"Retry-After": "5"})
        return state.engine

    @app.get("/health")
    async def health():
        if state.engine is not None:
            return {"status": "ok", "model": settings.model_name}
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": int(START),
                                            "owned_by": "specexec"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _complete(request, ChatCompletionRequest, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(request, CompletionRequest, chat=False)

    async def _complete(request: Request, schema, chat: bool):
        arrival = time.monotonic()
        check_key(request)
        raw = await _read_body(request)
        try:
            body = schema.model_validate_json(raw)
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from None
        if body.model != settings.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist; this server serves "
                                f"`{settings.model_name}`", "invalid_request_error", "model", "model_not_found")
        engine = ready_engine()
        limits = Limits(settings.max_prompt_tokens or engine.max_context - 1, settings.max_tokens)
        prepared = await asyncio.to_thread(prepare_locked, body, chat, engine, limits)
        job = Job(prepared.prompt_ids, prepared.config, prepared.stops, arrival + settings.request_timeout,
                  asyncio.get_running_loop())
        try:
            state.worker.submit(job)
        except QueueFull as full:
            raise APIError(429, f"the server is busy ({settings.max_queue} requests waiting); retry after "
                                f"{full.retry_after} s", "rate_limit_exceeded", None, "queue_full",
                           {"Retry-After": str(full.retry_after)}) from None
        fmt = ResponseFormat(chat, settings.model_name, len(prepared.prompt_ids))
        try:
            first = await _next_event(job, request, job.deadline - time.monotonic())
        except BaseException:
            job.cancel()
            raise
        if isinstance(first, Failed):
            raise first.error
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(job, fmt, include_usage, arrival), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(job, request, fmt, arrival)

    async def _whole(job: Job, request: Request, fmt: ResponseFormat, arrival: float):
        pieces = []
        try:
            while True:
                event = await _next_event(job, request, None)
                if isinstance(event, Delta):
                    if not pieces and event.tokens:
                        metrics.first_token_seconds.observe(time.monotonic() - arrival)
                    pieces.append(event.text)
                elif isinstance(event, Failed):
                    raise event.error
                elif isinstance(event, Finished):
                    metrics.request_seconds.observe(time.monotonic() - arrival)
                    return fmt.whole("".join(pieces), event)
        finally:
            job.cancel()  # a no-op once finished; frees the engine if the client went away

    async def _sse(job: Job, fmt: ResponseFormat, include_usage: bool, arrival: float):
        first_token = True
        try:
            if fmt.chat:
                yield fmt.sse(fmt.chunk(role=True))
            while True:
                event = await job.events.get()
                if isinstance(event, Delta):
                    if first_token and event.tokens:
                        first_token = False
                        metrics.first_token_seconds.observe(time.monotonic() - arrival)
                    if event.text:
                        yield fmt.sse(fmt.chunk(text=event.text))
                elif isinstance(event, Failed):
                    yield fmt.sse(event.error.body())
                    break
                elif isinstance(event, Finished):
                    metrics.request_seconds.observe(time.monotonic() - arrival)
                    yield fmt.sse(fmt.chunk(finish=event))
                    if include_usage:
                        yield fmt.sse(fmt.usage_chunk(event))
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client went away (or we are done): the worker stops within one pass

    return app


START = time.time()


MAX_BODY_BYTES = 16 << 20


async def _read_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES (announced or sent)."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _next_event(job: Job, request: Request, timeout: float | None):
    """The job's next event; cancels the job if the client disconnects or ``timeout`` passes."""
    waited = 0.0
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            waited += 0.5
            if await request.is_disconnected():
                job.cancel()
                raise APIError(499, "client closed the request") from None
            if timeout is not None and waited >= timeout:
                job.cancel()
                raise APIError(503, "the request waited for the engine past its time limit; retry later",
                               "server_error", None, "timeout", {"Retry-After": "5"}) from None
            continue
        if not isinstance(event, Started) or timeout is not None:
            return event
