"""A bounded load test on loopback: 8 concurrent clients x 5 requests (chat and completions, streamed and
not, some cancelled mid-stream) against a server with a queue of 3. Every request gets its complete,
correct text or an explicit 429/503; none is lost, cut or mixed with another's; the server is healthy after."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from specexec import GenerationConfig, SpecExecEngine

from serve_helpers import ServerProcess, get, post, request, save_tiny_chat_model

MODEL, KEY, TOKENS = "tiny", "sk-test-123", 24
PROMPTS = ["The river", "Seven ways to", "In the beginning", "A short poem about rain"]
CLIENTS, ROUNDS = 8, 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = save_tiny_chat_model(tmp_path_factory.mktemp("tiny-load"))
    engine = SpecExecEngine.from_pretrained(str(folder), "truncated:1", config=GenerationConfig(max_new_tokens=TOKENS))
    want = {p: (engine.generate(p, chat=True).text, engine.generate(p).text) for p in PROMPTS}
    proc = ServerProcess("--target", str(folder), "--draft", "truncated:1", "--served-model-name", MODEL,
                         "--max-new-tokens", str(TOKENS), "--max-queue", "3", "--api-key", KEY)
    yield proc, want
    proc.stop()


def one_request(client, kind: int, prompt: str, want: dict):
    """('ok' | 'cancelled' | 'refused', detail); raises AssertionError on a wrong answer."""
    chat_text, completion_text = want[prompt]
    messages = [{"role": "user", "content": prompt}]
    try:
        if kind == 0:
            r = client.chat.completions.create(model=MODEL, messages=messages)
            assert r.choices[0].message.content == chat_text and r.usage.completion_tokens == TOKENS
        elif kind == 1:
            text = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(model=MODEL, messages=messages, stream=True))
            assert text == chat_text
        elif kind == 2:  # read the first chunk, then hang up
            stream = client.completions.create(model=MODEL, prompt=prompt, stream=True)
            first = next(iter(stream)).choices[0].text
            stream.close()
            assert completion_text.startswith(first)
            return "cancelled", first
        else:
            r = client.completions.create(model=MODEL, prompt=prompt)
            assert r.choices[0].text == completion_text and r.choices[0].finish_reason == "length"
        return "ok", None
    except (openai.RateLimitError, openai.InternalServerError) as err:
        assert err.status_code in (429, 503), err
        assert int(err.response.headers["retry-after"]) >= 1
        assert set(err.body) >= {"message", "type", "code"}
        return "refused", err.status_code


def test_concurrent_clients(setup):
    server, want = setup
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    outcomes, failures = [], []
    barrier = threading.Barrier(CLIENTS)

    def run(i):
        for k in range(ROUNDS):
            barrier.wait(timeout=120)
            kind, prompt = (i + k) % 4, PROMPTS[(i * 3 + k) % len(PROMPTS)]
            try:
                outcomes.append(one_request(client, kind, prompt, want))
            except Exception as err:  # noqa: BLE001 - every failure is reported below
                failures.append(f"client {i} round {k} kind {kind}: {type(err).__name__}: {err}")

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "clients still running after 300 s"
    assert not failures, failures
    assert len(outcomes) == CLIENTS * ROUNDS  # none lost
    counts = {kind: sum(o[0] == kind for o in outcomes) for kind in ("ok", "cancelled", "refused")}
    assert counts["ok"] >= CLIENTS and counts["refused"] >= 1, counts
    assert time.monotonic() - start < 240

    # healthy afterwards: nothing queued or running, a request answered correctly
    assert get(server.url + "/health")[0] == 200
    r = client.completions.create(model=MODEL, prompt=PROMPTS[0])
    assert r.choices[0].text == want[PROMPTS[0]][1]
    _, metrics, _ = request("GET", server.url + "/metrics")
    assert "specexec_queue_length 0.0" in metrics and "specexec_running 0.0" in metrics
    assert 'specexec_requests_total{endpoint="/v1/completions",status="429"}' in metrics


def test_api_key_is_required(setup):
    server, _ = setup
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, reply, _ = post(server.url + "/v1/completions", body, headers)
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    assert request("GET", server.url + "/v1/models")[0] == 401
    assert post(server.url + "/v1/completions", body, {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert get(server.url + "/health")[0] == 200  # health and metrics stay open for probes
