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
