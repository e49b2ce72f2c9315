"""Prompt sets: the embedded set, files, the search path and its order, chat-template handling."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from specexec.errors import ConfigError
from specexec.experiments import datasets as ds

PAPER_OASST = ("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>\n\n\n"
               "What is a Dyson Sphere? [\\INST]\n")


def test_embedded_set_is_varied():
    d = ds.resolve(None)
    assert d.name == "embedded" and len(d.prompts) >= 30
    kinds = {p.kind for p in d.prompts}
    assert kinds == {"chat", "text"}
    texts = [p.text for p in d.prompts]
    assert any("def " in t or "SELECT" in t or "Python" in t for t in texts)  # code
    assert len(set(texts)) == len(texts)
    assert [p.id for p in d.prompts] == list(range(len(d.prompts)))
    assert ds.resolve("embedded").prompts == d.prompts


def test_llama2_wrapper_stripping():
    assert ds.strip_llama2_wrapper(PAPER_OASST) == "What is a Dyson Sphere?"
    assert ds.strip_llama2_wrapper("<s>[INST] Hello there [/INST]") == "Hello there"
    assert ds.strip_llama2_wrapper("[INST] <<SYS>>\nsys\n<</SYS>>\n\nHi [/INST] ") == "Hi"
    assert ds.strip_llama2_wrapper("Plain text about [INST] tags") is None


def test_chat_template_modes():
    wrapped = ds.Prompt(0, PAPER_OASST, "chat")
    question = ds.Prompt(1, "What is 2+2?", "chat")
    passage = ds.Prompt(2, "The river ran", "text")
    assert ds.prepare(wrapped, "auto", True) == ("What is a Dyson Sphere?", True)
    assert ds.prepare(wrapped, "auto", False) == ("What is a Dyson Sphere?", False)  # no template: stripped text
    assert ds.prepare(question, "auto", True) == ("What is 2+2?", True)
    assert ds.prepare(passage, "auto", True) == ("The river ran", False)
    for p in (wrapped, question, passage):
        assert ds.prepare(p, "none", True) == (p.text, False)


def test_json_and_jsonl_files(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps([[7, "first"], [8, PAPER_OASST], [9, "third", "chat"]]))
    d = ds.resolve(str(f))
    assert [(p.id, p.kind) for p in d.prompts] == [(7, "text"), (8, "chat"), (9, "chat")]
    g = tmp_path / "mine.jsonl"
    g.write_text('[0, "a"]\n{"id": "x", "text": "b", "kind": "chat"}\n"c"\n')
    assert [(p.id, p.text, p.kind) for p in ds.resolve(str(g)).prompts] == [
        (0, "a", "text"), ("x", "b", "chat"), (2, "c", "text")]
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match="-d/--dataset"):
        ds.resolve(str(bad))


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_prompts.json"
    path.write_text(json.dumps([[0, text]]))
    return path


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A fake checkout with ../shared/datasets beside it, a user data folder, and an env folder."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(ds, "checkout_root", lambda: checkout)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ds.ENV_VAR, raising=False)
    monkeypatch.setattr(ds, "_hub_reachable", lambda: False)
    return {"env": tmp_path / "env", "shared": tmp_path / "shared" / "datasets",
            "user": tmp_path / "xdg" / "specexec" / "datasets"}


def test_search_order_env_then_shared_then_user(layout, monkeypatch):
    _write(layout["user"], "c4", "from user")
    assert ds.resolve("c4").prompts[0].text == "from user"
    _write(layout["shared"], "c4", "from shared")
    assert ds.resolve("c4").prompts[0].text == "from shared"
    _write(layout["env"], "c4", "from env")
    monkeypatch.setenv(ds.ENV_VAR, str(layout["env"]))
    d = ds.resolve("c4")
    assert d.prompts[0].text == "from env" and d.source == str(layout["env"] / "c4_prompts.json")
    assert d.prompts[0].kind == "text"
    _write(layout["env"], "oasst", "a question")
    assert ds.resolve("oasst").prompts[0].kind == "chat"  # a chat prompt set
    _write(layout["env"], "wikitext", "an article")
    assert ds.resolve("wiki").name == ds.resolve("wikitext_prompts").name == "wikitext"


def test_not_found_lists_where_it_looked(layout):
    with pytest.raises(ConfigError) as info:
        ds.resolve("mtbench")
    msg = str(info.value)
    for folder in (layout["shared"], layout["user"]):
        assert str(folder / "mtbench_prompts.json") in msg
    assert "-d/--dataset" in msg and ("not reachable" in msg or "not installed" in msg)


def test_hub_fallback_saves_to_user_folder(layout, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    monkeypatch.setattr(ds, "_hub_reachable", lambda: True)
    monkeypatch.setattr(ds, "_from_hub", lambda name: [ds.Prompt(0, f"{name} from the hub", "chat")])
    d = ds.resolve("mtbench")
    assert d.prompts[0].text == "mtbench from the hub" and "hub" in d.source
    saved = layout["user"] / "mtbench_prompts.json"
    assert json.loads(saved.read_text()) == [[0, "mtbench from the hub"]]
    monkeypatch.setattr(ds, "_hub_reachable", lambda: False)
    assert ds.resolve("mtbench").source == str(saved)  # found locally next time


def test_shared_paper_datasets_when_present():
    shared = ds.checkout_root().parent / "shared" / "datasets" / "oasst_prompts.json"
    if not shared.exists():
        pytest.skip("no ../shared/datasets beside this checkout")
    d = ds.resolve("oasst")
    assert len(d.prompts) == 540 and all(p.kind == "chat" for p in d.prompts[:20])
    assert ds.prepare(d.prompts[0], "auto", True) == ("What is a Dyson Sphere?", True)
