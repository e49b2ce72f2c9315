"""`specexec serve` driven by the official `openai` client and raw HTTP: responses equal the engine's own
generation, streamed chunks join to the whole text, usage is right, every bad request gets an OpenAI-shaped
error (never a 500) and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from specexec import GenerationConfig, SpecExecEngine

from serve_helpers import ServerProcess, get, post, request, save_tiny_chat_model

MODEL = "tiny"
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def server(folder):
    proc = ServerProcess("--target", str(folder), "--draft", "truncated:1", "--served-model-name", MODEL,
                         "--max-new-tokens", str(MAX_TOKENS), "--max-tokens-limit", "64")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def engine(folder):
    return SpecExecEngine.from_pretrained(str(folder), "truncated:1",
                                          config=GenerationConfig(max_new_tokens=MAX_TOKENS))


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat_ids(engine, messages):
    return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert get(server.url + "/health") == (200, {"status": "ok", "model": MODEL})


def test_chat_equals_engine(client, engine):
    want = engine.generate("Tell me about the sea.", chat=True, max_new_tokens=12)
    got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me about the sea."}],
                                         max_tokens=12, temperature=0)
    choice = got.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == "length"
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    assert got.usage.completion_tokens == len(want.token_ids) == 12
    assert got.usage.total_tokens == got.usage.prompt_tokens + 12
    stats = got.model_extra["specexec"]
    assert stats["target_passes"] == want.stats.target_passes
    assert stats["accepted_per_pass"] == want.stats.accepted_per_pass
    assert stats["tokens_per_pass"] == pytest.approx(want.stats.tokens_per_pass, abs=1e-3)


def test_multi_turn_chat_stream_joins_to_engine_text(client, engine):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Count to five."}]
    want = engine.generate(chat_ids(engine, messages), max_new_tokens=MAX_TOKENS)
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert chunks[-1].usage.prompt_tokens == len(want.prompt_token_ids)


def test_completions_whole_and_streamed(client, engine):
    prompt = "The history of the printing press"
    want = engine.generate(prompt, max_new_tokens=16)
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert whole.choices[0].text == want.text
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(want.prompt_token_ids), 16)
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt=prompt, max_tokens=16,
                                                                    stream=True)]
    assert "".join(pieces) == want.text and len([p for p in pieces if p]) > 1
    ids = client.completions.create(model=MODEL, prompt=want.prompt_token_ids, max_tokens=16)  # token ids
    assert ids.choices[0].text == want.text


def test_sampling_with_a_seed_equals_engine(client, engine):
    # a small tree: sampling at every node of a 49152-token vocabulary is slow on a CPU
    want = engine.generate("Once upon a time", max_new_tokens=12, temperature=0.9, top_p=0.95, seed=7, max_budget=8)
    got = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0.9,
                                    top_p=0.95, seed=7, extra_body={"max_budget": 8})
    assert got.choices[0].text == want.text
    greedy = engine.generate("Once upon a time", max_new_tokens=12, max_budget=8).text
    assert want.text != greedy  # it did sample


def test_our_fields_through_the_body(client, engine):
    want = engine.generate("A list of fruits:", max_new_tokens=16)
    for extra in ({"method": "autoregressive"}, {"method": "specinfer", "max_n_beams": 4, "max_beam_len": 4},
                  {"max_budget": 8, "top_k": 5, "max_branch_width": 4, "decay": 0.9}, {"max_budget": "auto"}):
        got = client.completions.create(model=MODEL, prompt="A list of fruits:", max_tokens=16, extra_body=extra)
        assert got.choices[0].text == want.text, extra  # greedy: every method gives the target's text
        assert got.model_extra["specexec"]["method"] == extra.get("method", "specexec")


def test_stop_strings_cut_the_text(client, engine):
    want = engine.generate("Recipe for bread", max_new_tokens=MAX_TOKENS).text
    stop = want[len(want) // 2: len(want) // 2 + 3]
    cut = want[: want.find(stop)]
    got = client.completions.create(model=MODEL, prompt="Recipe for bread", stop=[stop, "\x00never"])
    assert got.choices[0].text == cut and got.choices[0].finish_reason == "stop"
    assert got.model_extra["specexec"]["stop_reason"] == "stop_string"
    streamed = list(client.completions.create(model=MODEL, prompt="Recipe for bread", stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_raw_sse_format(server):
    status, text, headers = request("POST", server.url + "/v1/chat/completions",
                                    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 5, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["specexec"]["target_passes"] >= 1


BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_tokens": 65}, "max_tokens"),  # over --max-tokens-limit
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"n": 2}, "n"),
    ({"seed": -1}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"method": "beam"}, "method"),
    ({"max_budget": 0}, "max_budget"),
    ({"max_budget": 10**6}, "max_budget"),
    ({"max_budget": "automatic"}, "max_budget"),
    ({"max_budget": "16"}, "max_budget"),
    ({"decay": 0}, "decay"),
    ({"min_log_prob": 1.0}, "min_log_prob"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "messages"),  # over the 512-token context
]
BAD_COMPLETION = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2, 10**6]}, "prompt"),
    ({"prompt": list(range(1, 600))}, "prompt"),
    ({"prompt": list(range(1, 500)), "max_tokens": 30}, "max_tokens"),  # prompt + max_tokens over the context
    ({"prompt": 3}, "prompt"),
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
]


@pytest.mark.parametrize("change,param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_bad_chat_requests(server, change, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    status, reply, _ = post(server.url + "/v1/chat/completions", body)
    assert status == 400, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["param"].startswith(param)
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]


@pytest.mark.parametrize("change,param", BAD_COMPLETION, ids=[p for _, p in BAD_COMPLETION])
def test_bad_completion_requests(server, change, param):
    status, reply, _ = post(server.url + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4,
                                                             **change})
    assert status == 400, reply
    assert reply["error"]["param"] == param and reply["error"]["message"]


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"), (b"", 400, "invalid_json"), (b"[]", 400, None),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_required_parameter"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
])
def test_malformed_bodies_and_unknown_model(server, body, status, code):
    got, reply, _ = post(server.url + "/v1/chat/completions", body)
    assert got == status and set(reply["error"]) == {"message", "type", "param", "code"}
    if code:
        assert reply["error"]["code"] == code


def metric_values(server) -> dict[str, float]:
    _, text, _ = request("GET", server.url + "/metrics")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_client_hanging_up_mid_stream_frees_the_engine(server, client):
    before = metric_values(server)
    stream = client.completions.create(model=MODEL, prompt="A very long story", max_tokens=64, stream=True,
                                       extra_body={"max_budget": 1024, "max_n_beams": 64})  # slow passes
    next(iter(stream))
    stream.close()
    for _ in range(100):
        after = metric_values(server)
        if after.get('specexec_cancelled_total{reason="cancelled"}', 0) > before.get(
                'specexec_cancelled_total{reason="cancelled"}', 0) and after["specexec_running"] == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the server did not stop the generation of a client that hung up")
    generated = after["specexec_generated_tokens_total"] - before["specexec_generated_tokens_total"]
    assert 0 < generated < 64


def test_nulls_accepted_and_huge_bodies_refused(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": None,
            "stream": None, "stream_options": None, "temperature": None, "stop": None, "user": "u1"}
    status, reply, _ = post(server.url + "/v1/chat/completions", body)
    assert status == 200 and reply["usage"]["completion_tokens"] == 3
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")  # announces 17 MiB, sends none of it
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(17 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "body_too_large"
    conn.close()


def test_wrong_routes_and_methods(server):
    assert request("GET", server.url + "/v1/chat/completions")[0] == 405
    status, reply, _ = request("GET", server.url + "/v1/nothing")
    assert status == 404 and "error" in reply


def test_official_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3)
    assert err.value.body["param"] == "n" and "n=1" in err.value.body["message"]


def test_still_serving_and_metrics(server, client, engine):
    want = engine.generate("Tell me about the sea.", chat=True, max_new_tokens=12)
    got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me about the sea."}],
                                         max_tokens=12)
    assert got.choices[0].message.content == want.text
    values = metric_values(server)
    assert values["specexec_target_passes_total"] > 0 and values["specexec_generated_tokens_total"] > 0
    assert values["specexec_drafted_tokens_total"] >= values["specexec_accepted_tokens_total"] > 0
    assert values['specexec_accepted_at_depth_total{depth="1"}'] > 0
    assert values["specexec_accepted_tokens_per_pass_count"] == values["specexec_target_passes_total"]
    assert values['specexec_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert values["specexec_queue_length"] == 0 and values["specexec_running"] == 0
    assert values["specexec_generated_tokens_total"] == pytest.approx(
        values["specexec_accepted_tokens_total"] + values["specexec_target_passes_total"])
