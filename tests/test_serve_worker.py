"""The engine worker in-process: a cancelled request frees the engine within one target pass, the time
limit cuts a generation, a full queue is refused at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from specexec import GenerationConfig, SpecExecEngine
from specexec.models import truncated_copy
from specexec.server.metrics import ServerMetrics
from specexec.server.worker import Delta, EngineWorker, Failed, Finished, Job, QueueFull, Started

from conftest import tiny_model


@pytest.fixture(scope="module")
def engine():
    target = tiny_model("llama", vocab=64, max_positions=4096)
    return SpecExecEngine(target, None, truncated_copy(target, 1))


def job(loop, timeout=60.0, max_new_tokens=1000, **kw):
    return Job(list(range(1, 9)), GenerationConfig(max_new_tokens=max_new_tokens, max_budget=16, **kw), [],
               time.monotonic() + timeout, loop)


async def events_until_finished(j):
    events = []
    while not events or not isinstance(events[-1], (Finished, Failed)):
        events.append(await asyncio.wait_for(j.events.get(), 60))
    return events


def test_cancel_frees_the_engine_within_one_pass(engine):
    async def main():
        worker = EngineWorker(engine, ServerMetrics())
        j = job(asyncio.get_running_loop())
        worker.submit(j)
        assert isinstance(await j.events.get(), Started)
        seen = 0
        while seen < 3:
            event = await j.events.get()
            seen += isinstance(event, Delta) and event.tokens > 0
        j.cancel()
        rest = await events_until_finished(j)
        done = rest[-1]
        assert isinstance(done, Finished) and done.stats["stop_reason"] == "cancelled"
        assert done.stats["target_passes"] <= seen + 1  # stopped at the next pass boundary
        assert done.completion_tokens < 1000
        assert not engine._busy.locked()  # free before the request hears it is finished
        worker.shutdown()

    asyncio.run(main())


def test_time_limit_cuts_a_generation(engine):
    async def main():
        worker = EngineWorker(engine, ServerMetrics())
        j = job(asyncio.get_running_loop(), timeout=0.5)
        worker.submit(j)
        started = time.monotonic()
        events = await events_until_finished(j)
        done = events[-1]
        assert isinstance(done, Finished) and done.finish_reason == "length"
        assert done.stats["stop_reason"] == "time_limit" and 0 < done.completion_tokens < 1000
        assert time.monotonic() - started < 5
        late = job(asyncio.get_running_loop(), timeout=-1)  # already past its limit when the worker gets it
        worker.submit(late)
        failed = await asyncio.wait_for(late.events.get(), 10)
        assert isinstance(failed, Failed) and failed.error.status == 503 and "Retry-After" in failed.error.headers
        worker.shutdown()

    asyncio.run(main())


def test_full_queue_is_refused_at_once(engine):
    async def main():
        worker = EngineWorker(engine, ServerMetrics(), max_queue=1)
        loop = asyncio.get_running_loop()
        running, waiting, refused = job(loop), job(loop), job(loop)
        worker.submit(running)
        assert isinstance(await running.events.get(), Started)
        worker.submit(waiting)
        with pytest.raises(QueueFull) as full:
            worker.submit(refused)
        assert 1 <= full.value.retry_after <= 60
        waiting.cancel()
        running.cancel()
        await events_until_finished(running)
        for _ in range(500):  # the worker takes the cancelled job off the queue and skips it
            if worker.waiting == 0:
                break
            await asyncio.sleep(0.01)
        j = job(loop, max_new_tokens=5)  # the cancelled waiting job is skipped, the next one runs
        worker.submit(j)
        events = await events_until_finished(j)
        assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 5
        assert waiting.events.empty()
        worker.shutdown()

    asyncio.run(main())


def test_health_while_loading_and_after_a_failed_load():
    import threading

    from starlette.testclient import TestClient

    from specexec.server import ServerSettings, create_app

    go = threading.Event()

    def load():
        go.wait(10)
        raise OSError("no space left on device")

    failures = []
    app = create_app(ServerSettings(model_name="m", on_load_error=failures.append), load)
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "loading", "error": None}
        r = client.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.json()["error"]["code"] == "loading"
        go.set()
        for _ in range(100):
            if failures:
                break
            time.sleep(0.02)
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "no space" in r.json()["error"]
    assert failures == ["OSError: no space left on device"]


def test_serve_command_errors_are_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from serve_helpers import REPO

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    for args, message in ((["--budget", "0"], "a budget is a positive integer or 'auto'"),
                          (["--target", str(tmp_path / "missing"), "--port", "0"], "not found")):
        r = subprocess.run([sys.executable, "-m", "specexec", "serve", *args], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=120)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
