"""The one thread that drives the engine, and the bounded queue in front of it.

One engine decodes one sequence at a time, so requests wait in a queue of at most
``max_queue`` entries (a full queue is refused at once) and a single worker thread runs
them in arrival order, off the event loop. The worker sends events back to the request's
coroutine through the loop: :class:`Started`, then :class:`Delta` per target pass, then
:class:`Finished` (or :class:`Failed`). Between two target passes it checks whether the
request was cancelled (client gone), hit a stop string or ran past its time limit, and
closes the engine's stream then, so the engine is free within one pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import GenerationConfig
from ..errors import SpecExecError
from .errors import APIError
from .metrics import ServerMetrics
from .stops import StopMatcher

log = logging.getLogger("specexec.server")

# the engine's stop reasons -> OpenAI's finish_reason
FINISH = {"eos": "stop", "stop_string": "stop", "length": "length", "context": "length", "time_limit": "length"}


@dataclass
class Started:
    pass


@dataclass
class Delta:
    text: str
    tokens: int


@dataclass
class Finished:
    finish_reason: str
    completion_tokens: int
    stats: dict


@dataclass
class Failed:
    error: APIError


@dataclass
class Job:
    """One request's generation: what to run, and the channel its events come back on."""

    prompt_ids: list[int]
    config: GenerationConfig
    stops: list[str]
    deadline: float  # time.monotonic() after which the generation is cut
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__("queue full")
        self.retry_after = retry_after


class EngineWorker:
    def __init__(self, engine, metrics: ServerMetrics, max_queue: int = 16):
        self.engine = engine
        self.metrics = metrics
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specexec-engine")
        self._lock = threading.Lock()
        self.waiting = 0
        self.stopping = threading.Event()
        self._mean_seconds = 5.0  # running mean of generation times, for Retry-After

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to work off the queue, 1..60."""
        return int(min(60, max(1, math.ceil(self._mean_seconds * (self.waiting + 1)))))

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.waiting >= self.max_queue:
                raise QueueFull(self.retry_after())
            self.waiting += 1
            self.metrics.queue_length.set(self.waiting)
        self._executor.submit(self._run, job)

    def shutdown(self) -> None:
        self.stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- worker thread
    def _run(self, job: Job) -> None:
        with self._lock:
            self.waiting -= 1
            self.metrics.queue_length.set(self.waiting)
        if job.cancelled.is_set() or self.stopping.is_set():
            self.metrics.cancelled.labels("before_start").inc()
            return
        if time.monotonic() > job.deadline:
            job.emit(Failed(APIError(503, "the request waited for the engine past its time limit; retry later",
                                     "server_error", None, "timeout", {"Retry-After": str(self.retry_after())})))
            return
        self.metrics.running.set(1)
        started = time.perf_counter()
        try:
            self._generate(job)
        except Exception as err:  # noqa: BLE001 - a failed generation must not take the worker down
            log.exception("generation failed")
            job.emit(Failed(APIError(500, f"generation failed: {type(err).__name__}: {err}", "server_error")))
        finally:
            self.metrics.running.set(0)
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - started)

    def _generate(self, job: Job) -> None:
        try:
            stream = self.engine.stream(job.prompt_ids, config=job.config)
        except SpecExecError as err:
            job.emit(Failed(APIError(400, str(err))))
            return
        job.emit(Started())
        matcher = StopMatcher(job.stops)
        reason = None
        wall = time.perf_counter()
        try:
            for chunk in stream:
                text = matcher.add(chunk.text)
                if text or chunk.token_ids:
                    job.emit(Delta(text, len(chunk.token_ids)))
                if matcher.stopped:
                    reason = "stop_string"
                elif job.cancelled.is_set() or self.stopping.is_set():
                    reason = "cancelled"
                elif time.monotonic() > job.deadline:
                    reason = "time_limit"
                if reason:
                    break
            else:
                tail = matcher.flush()
                if tail:
                    job.emit(Delta(tail, 0))
        finally:
            stream.close()
        wall = time.perf_counter() - wall
        stats = stream.stats
        reason = reason or (stats.stop_reason if stats else "") or "length"
        if stats is None or reason != stats.stop_reason:  # stopped early
            self.metrics.cancelled.labels(reason).inc()
        accepted = list(stats.accepted_per_pass) if stats else []
        self.metrics.record_generation(len(job.prompt_ids), accepted, sum(stats.tree_sizes) if stats else 0)
        passes = len(accepted)
        summary = {
            "method": job.config.method,
            "target_passes": passes,
            "tokens_per_pass": round(sum(accepted) / passes, 4) if passes else 0.0,
            "accepted_per_pass": accepted,
            "draft_tokens": sum(stats.tree_sizes) if stats else 0,
            "prefill_seconds": round(stats.prefill_seconds, 4) if stats else 0.0,
            "seconds": round(wall, 4),
            "stop_reason": reason,
        }
        job.emit(Finished(FINISH.get(reason, "length"), sum(accepted), summary))
