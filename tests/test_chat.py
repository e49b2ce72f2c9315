"""`specexec chat` on a pseudo-terminal: two turns with history, /stats, /reset, Ctrl-C in the middle of a
reply and another turn after it, /save, /exit. Replies equal the engine's greedy text for the same history."""

from __future__ import annotations

import json
import os
import signal
import sys

import pexpect
import pytest

from specexec import GenerationConfig, SpecExecEngine

from serve_helpers import REPO, save_tiny_chat_model

SYSTEM, TOKENS, BUDGET = "Be brief.", 120, 16  # a fixed budget: every reply drafts trees (/stats shows them)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def reference(engine, messages) -> str:
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return engine.generate(list(ids)).text


def terminal_defaults():
    """In the child: Ctrl-C interrupts, as in a user's terminal. A test run started in the background by a
    shell without job control inherits SIGINT ignored, and so would every child it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_chat_session(folder, tmp_path):
    engine = SpecExecEngine.from_pretrained(str(folder), "truncated:1",
                                            config=GenerationConfig(max_new_tokens=TOKENS, max_budget=BUDGET))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    child = pexpect.spawn(sys.executable, ["-m", "specexec", "chat", "--target", str(folder), "--draft", "truncated:1",
                                           "--max-new-tokens", str(TOKENS), "--budget", str(BUDGET),
                                           "--system", SYSTEM],
                          cwd=str(REPO), env=env, encoding="utf-8", timeout=90, dimensions=(50, 2000),
                          preexec_fn=terminal_defaults)
    try:
        child.expect_exact("you> ")
        for text in ("Hello there", "And a second question"):
            child.sendline(text)
            child.expect_exact("you> ")
        child.sendline("/stats")
        child.expect(r"last reply: (\d+) tokens in (\d+) target passes = ([\d.]+) tokens/pass, ([\d.]+) tokens/s")
        tokens, passes, per_pass, speed = child.match.groups()
        assert int(tokens) == TOKENS and float(per_pass) == pytest.approx(TOKENS / int(passes), abs=0.01)
        assert float(speed) > 0
        child.expect_exact("tokens per pass: ")
        child.expect_exact("acceptance by depth: d1 ")
        child.expect_exact("you> ")

        outcomes = []
        for _ in range(5):  # a short reply may finish before Ctrl-C lands: start over and try again
            child.sendline("/reset")
            child.expect_exact("[conversation reset]")
            child.expect_exact("you> ")
            child.sendline("Tell me a long story")
            child.expect_exact("Tell me a long story\r\n")  # the terminal's echo
            child.expect(r"\S{3}")  # the reply has started
            child.sendintr()
            markers = ["[reply stopped; what was said is kept]", "[Ctrl-D or /exit ends the session]",
                       "[stopped before the reply began]"]
            landed = child.expect_exact(markers + [pexpect.TIMEOUT], timeout=15)
            if landed == 3:
                # Ctrl-C landed as the reply ended, just before input() waited: CPython's readline then
                # raises KeyboardInterrupt only at the next keystroke. Press one.
                child.sendline("")
                landed = child.expect_exact(markers + [pexpect.TIMEOUT], timeout=15)
            outcomes.append(["mid-reply", "after the reply", "before the reply",
                             f"lost (output ends {child.before[-120:]!r})"][landed])
            if landed == 3:
                continue
            child.expect_exact("you> ")
            if landed == 0:
                break
        else:
            raise AssertionError(f"Ctrl-C never landed in the middle of a reply in 5 tries: {outcomes}")
        child.sendline("Go on")
        child.expect_exact("you> ")
        saved = tmp_path / "conversation.json"
        child.sendline(f"/save {saved}")
        child.expect_exact("[saved 5 messages")
        child.expect_exact("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before

    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "Tell me a long story" and messages[3]["content"] == "Go on"
    full = reference(engine, messages[:2])
    partial = messages[2]["content"]
    assert partial and full.startswith(partial) and len(partial) < len(full)  # stopped mid-reply, kept
    assert messages[4]["content"] == reference(engine, messages[:4])  # the next turn saw the kept history


def test_history_and_context_overflow(folder, tmp_path):
    engine = SpecExecEngine.from_pretrained(str(folder), "truncated:1", config=GenerationConfig(max_new_tokens=12))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    child = pexpect.spawn(sys.executable, ["-m", "specexec", "chat", "--target", str(folder), "--draft", "truncated:1",
                                           "--max-new-tokens", "12"],
                          cwd=str(REPO), env=env, encoding="utf-8", timeout=90, dimensions=(50, 2000),
                          preexec_fn=terminal_defaults)
    saved = tmp_path / "c.json"
    try:
        child.expect_exact("you> ")
        for text in ("First", "Second"):
            child.sendline(text)
            child.expect_exact("you> ")
        child.sendline("word " * 600)  # past the 512-token context
        child.expect_exact("no longer fits the model's context")
        child.expect_exact("/reset to start over")
        child.expect_exact("you> ")
        child.sendline(f"/save {saved}")
        child.expect_exact("you> ")
        child.sendeof()  # Ctrl-D ends the session
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    messages = json.loads(saved.read_text())["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["First", "Second"]
    assert messages[1]["content"] == reference(engine, messages[:1])
    assert messages[3]["content"] == reference(engine, messages[:3])
