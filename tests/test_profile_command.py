"""``specexec profile`` and ``specexec generate --budget auto`` on tiny models saved to folders."""

from __future__ import annotations

import json

import pytest

from experiments_tiny import save_tiny_models
from specexec.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_profile_prints_a_table_draws_a_plot_and_caches(tiny, cache, tmp_path, capsys):
    draft, target = tiny
    png = tmp_path / "profile.png"
    assert main(["profile", "--target", target, "--draft", draft, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows][:3] == [1, 2, 4]
    assert all(float(r[1]) > 0 for r in rows) and float(rows[0][2]) == 1.0  # seconds, and x of 1 token
    assert "measured now" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = list((cache / "profiles").glob("*.json"))
    assert len(files) == 1 and str(files[0]) in out
    assert main(["profile", "--target", target, "--draft", draft]) == 0
    assert "from the cache" in capsys.readouterr().out
    assert main(["profile", "--target", target, "--draft", draft, "--refresh"]) == 0
    assert "measured now" in capsys.readouterr().out
    assert main(["profile", "--target", target, "--draft", draft, "--dtype", "float64"]) == 0
    assert "measured now" in capsys.readouterr().out and len(list((cache / "profiles").glob("*.json"))) == 2


def test_generate_with_auto_budget(tiny, cache, capsys):
    draft, target = tiny
    args = ["generate", "--target", target, "--draft", draft, "--prompt", "the cat sat on the", "--max-new-tokens", "12"]
    assert main(args + ["--method", "autoregressive", "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main(args + ["--budget", "auto", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["token_ids"] == want["token_ids"]
    assert len(got["stats"]["budgets"]) == got["stats"]["target_passes"]
    assert main(args + ["--budget", "AUTO", "--stats"]) == 0
    assert "budgets of the passes' trees" in capsys.readouterr().err


def test_viz_draws_the_tree_the_engine_accepted(tiny, cache, tmp_path, capsys):
    from html.parser import HTMLParser

    import torch

    from specexec import SpecExecEngine
    from specexec.viz import TreeSnapshot

    draft, target = tiny
    png, page = tmp_path / "tree.png", tmp_path / "tree.html"
    args = ["viz", "--target", target, "--draft", draft, "--prompt", "the cat sat on the", "--budget", "16",
            "--iteration", "1", "--out", str(png), "--html", str(page)]
    assert main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.seen = [], set()

        def handle_starttag(self, tag, attrs):
            self.seen.add(tag)
            if tag not in ("meta", "br", "path", "use", "stop", "rect", "circle", "line", "polyline", "image"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if self.stack and self.stack[-1] == tag:
                self.stack.pop()

    tags = Tags()
    tags.feed(text)
    assert {"html", "svg", "table"} <= tags.seen and "</html>" in text
    # the same generation through the API: the snapshot's path is the one the engine accepted
    engine = SpecExecEngine.from_pretrained(target, draft)
    snap = TreeSnapshot(at=1)
    engine.tree_watchers.append(snap)
    res = engine.generate("the cat sat on the", max_budget=16, max_new_tokens=32)
    emitted = res.stats.accepted_per_pass
    start = emitted[0]
    assert snap.taken and snap.accepted_tokens[: emitted[1]] == res.token_ids[start : start + emitted[1]]
    assert len(snap.path) - 1 == emitted[1] - 1 or res.stats.stop_reason  # accepted draft tokens
    assert 1 < len(snap.tokens) <= 17 and snap.parents[0] == -1
    assert all(snap.parents[i] == snap.path[k - 1] for k, i in enumerate(snap.path) if k)
    with torch.no_grad():  # the root of pass 1 is the last token emitted by pass 0
        assert snap.tokens[0] == (res.prompt_token_ids + res.token_ids)[len(res.prompt_token_ids) + start - 1]
    assert str(page) in capsys.readouterr().out


def test_viz_refuses_what_it_cannot_draw(tiny, cache, capsys):
    draft, target = tiny
    base = ["viz", "--target", target, "--draft", draft, "--prompt", "the cat", "--max-new-tokens", "3"]
    assert main(base + ["--iteration", "50"]) == 2
    assert "no pass 50" in capsys.readouterr().err
    assert main(base + ["--method", "autoregressive"]) == 2
    assert "no tree" in capsys.readouterr().err
