"""`specexec serve` on the embedded pair (SmolLM2-135M-Instruct and its shipped draft): the openai client's
chat reply at temperature 0 is the engine's greedy text, streamed or not."""

from __future__ import annotations

import openai
import pytest

import specexec

from serve_helpers import ServerProcess

QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess("--served-model-name", "smol", "--max-new-tokens", "24")
    yield proc
    proc.stop()


def test_embedded_chat_equals_engine(server):
    want = specexec.load().generate(QUESTION, chat=True, max_new_tokens=24, temperature=0)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": QUESTION}]
    got = client.chat.completions.create(model="smol", messages=messages, temperature=0)  # auto budget
    assert got.choices[0].message.content == want.text and "Paris" in want.text
    assert got.usage.completion_tokens == len(want.token_ids)
    fixed = client.chat.completions.create(model="smol", messages=messages, temperature=0,
                                           extra_body={"max_budget": 16})
    assert fixed.choices[0].message.content == want.text
    assert fixed.model_extra["specexec"]["tokens_per_pass"] > 1  # the shipped draft is accepted
    streamed = client.chat.completions.create(model="smol", messages=messages, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want.text
