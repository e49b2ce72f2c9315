"""The Python API: results, streaming, stats, draft-cache reuse, and the embedded default."""

import json
import subprocess
import sys

import pytest
import torch

from specexec import GenerationConfig, SpecExecEngine
from specexec.models import truncated_copy

from conftest import greedy_reference, tiny_model


@pytest.fixture(scope="module")
def tiny_engine():
    target = tiny_model("llama", seed=1, initializer_range=0.4)
    return SpecExecEngine(target, None, truncated_copy(target, 1))


def test_stream_chunks_add_up_to_the_result(embedded):
    target, tok = embedded
    engine = SpecExecEngine(target, tok, truncated_copy(target, 4), draft_tokenizer=tok)
    stream = engine.stream("Write a haiku about the sea.", chat=True, max_new_tokens=24, max_budget=16)
    chunks = list(stream)
    result = stream.result
    assert [t for c in chunks for t in c.token_ids] == result.token_ids
    assert "".join(c.text for c in chunks) == result.text
    assert len(chunks) == result.stats.target_passes
    ids = engine.encode("Write a haiku about the sea.", chat=True)
    assert result.prompt_token_ids == ids
    assert tok.decode(ids).count("<|im_start|>") >= 2  # the chat template was applied
    assert result.token_ids == greedy_reference(target, ids, 24, engine.eos_ids)


def test_stats_are_consistent(tiny_engine):
    res = tiny_engine.generate([1, 2, 3], max_new_tokens=40, max_budget=32)
    s = res.stats
    assert s.new_tokens == len(res.token_ids) == 40
    assert sum(s.accepted_per_pass) == 40 and len(s.accepted_per_pass) == s.target_passes
    assert s.tokens_per_pass == pytest.approx(40 / s.target_passes)
    assert all(0 <= n <= 32 for n in s.tree_sizes) and s.tree_sizes[0] >= 1  # 0: one token left, no tree
    assert s.draft_forward_seconds <= s.draft_seconds + 1e-9
    assert s.target_forward_seconds <= s.target_seconds + 1e-9
    assert 0 <= s.overhead_share <= 1
    d = res.to_dict()
    json.dumps(d)
    assert {"text", "token_ids", "prompt_token_ids", "stats"} <= set(d)
    assert {"target_passes", "new_tokens", "tokens_per_pass", "seconds"} <= set(d["stats"])


def test_config_object_and_overrides_agree(tiny_engine):
    cfg = GenerationConfig(method="specinfer", max_new_tokens=12, max_n_beams=3, max_beam_len=4)
    a = tiny_engine.generate([5, 6], config=cfg)
    b = tiny_engine.generate([5, 6], method="specinfer", max_new_tokens=12, max_n_beams=3, max_beam_len=4)
    assert a.token_ids == b.token_ids and a.stats.target_passes == b.stats.target_passes


def test_sampling_is_reproducible_with_a_seed(tiny_engine):
    a = tiny_engine.generate([5, 6], temperature=1.0, seed=7, max_new_tokens=20)
    b = tiny_engine.generate([5, 6], temperature=1.0, seed=7, max_new_tokens=20)
    c = tiny_engine.generate([5, 6], temperature=1.0, seed=8, max_new_tokens=20)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_draft_never_recomputes_accepted_tokens(tiny_engine, monkeypatch):
    """Each iteration the draft runs only the tokens it has not seen: at most the last
    accepted token (if it was a leaf) and the target's extra token."""
    tails = []
    runner = tiny_engine.draft_runner
    original = runner.forward_chain

    def spy(ids, start):
        tails.append(len(ids))
        return original(ids, start)

    monkeypatch.setattr(runner, "forward_chain", spy)
    res = tiny_engine.generate(list(range(1, 12)), max_new_tokens=40, max_budget=16)
    assert tails[0] == 10  # the prefill
    assert all(n <= 2 for n in tails[1:])
    assert res.stats.target_passes - 1 <= len(tails) - 1 <= res.stats.target_passes  # no tree when 1 token is left


def test_embedded_loads_from_the_converted_cache(monkeypatch):
    """After the one-time conversion the embedded target loads from the plain HF folder,
    without touching the GGUF file."""
    import specexec.models as models

    models.embedded_target_dir()  # converts if needed

    def no_gguf():
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(models, "smollm2_gguf_path", no_gguf)
    loaded = models.load_model("embedded")
    assert loaded.model.config.num_hidden_layers == 30
    assert loaded.tokenizer.eos_token == "<|im_end|>"


def test_two_processes_convert_the_embedded_model_once(monkeypatch, tmp_path):
    """Concurrent first uses of the embedded target: one converts, the other waits for the
    folder instead of converting again over it (the lock is taken per open file, so two
    threads stand in for two processes)."""
    import threading
    import time

    import specexec.models as models

    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: tmp_path / "model.gguf")
    calls = []

    def fake_convert(gguf, out, dtype):
        calls.append(out)
        time.sleep(0.3)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.embedded_target_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [calls[0], calls[0]]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "specexec", *args], capture_output=True, text=True, timeout=600)


def test_cli_json_and_streamed_text_agree(capsys):
    """The JSON run through the real entry point; the streamed and autoregressive runs in-process."""
    from specexec.cli import main

    common = ["generate", "--prompt", "List three colours.", "--chat", "--max-new-tokens", "10",
              "--budget", "8", "--draft", "truncated:4"]
    proc = run_cli(*common, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"text", "token_ids", "prompt_token_ids", "stats"} <= set(out)
    assert out["stats"]["new_tokens"] == len(out["token_ids"]) <= 10
    assert out["stats"]["target_passes"] >= 1 and out["stats"]["tokens_per_pass"] >= 1
    capsys.readouterr()
    assert main([*common, "--stats"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out.rstrip("\n") == out["text"]
    assert "tokens/pass" in streamed.err
    stop = {"eos": "end-of-sequence", "length": "--max-new-tokens"}[out["stats"]["stop_reason"]]
    assert stop in streamed.err  # the terminal says why generation stopped
    assert "tokens accepted per target pass" in streamed.err and "first token after" in streamed.err
    assert main(["generate", "--prompt", "List three colours.", "--chat", "--max-new-tokens", "10",
                 "--method", "autoregressive", "--json"]) == 0
    # greedy: same text whatever the method
    assert json.loads(capsys.readouterr().out)["token_ids"] == out["token_ids"]


def test_documented_defaults_side_by_side():
    """docs/experiments.md's table of defaults: the API's and the paper runner's, as the code has them."""
    import argparse
    from pathlib import Path

    from specexec.experiments import flags

    text = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    rows = {}
    for line in text.split("| setting | API, `generate`, `chat`, `serve` |", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, api, runner = [c.strip() for c in line.strip("|").split("|")]
        rows[name] = (api, runner)
    cfg = GenerationConfig()
    p = argparse.ArgumentParser()
    flags.add_arguments(p)
    run = p.parse_args([])
    runner_cfg = flags.build_configs(run)[0]
    got = {"method": (cfg.method, runner_cfg.method), "temperature": (cfg.sampling.temperature, run.temperature),
           "top_p": (cfg.sampling.top_p, run.top_p), "max_budget": (cfg.max_budget, run.max_budget),
           "max_n_beams": (cfg.max_n_beams, run.max_n_beams), "max_beam_len": (cfg.max_beam_len, run.max_beam_len),
           "max_branch_width": (cfg.max_branch_width, run.max_branch_width),
           "max_new_tokens": (cfg.max_new_tokens, run.max_new_tokens)}
    assert set(rows) == set(got)
    for name, (api, runner) in got.items():
        assert rows[name] == (str(api), str(runner)), name


def test_cli_defaults_are_the_apis():
    from specexec.cli import build_parser

    cfg = GenerationConfig()
    args = build_parser().parse_args(["generate", "--prompt", "x"])
    assert (args.max_new_tokens, args.budget, args.max_beam_len, args.max_n_beams, args.temperature, args.seed) == (
        cfg.max_new_tokens, cfg.max_budget, cfg.max_beam_len, cfg.max_n_beams, cfg.sampling.temperature, cfg.seed)
    for command in ("chat", "serve"):
        other = build_parser().parse_args([command])
        assert (other.max_new_tokens, other.budget) == (args.max_new_tokens, args.budget)
    help_text = run_cli("generate", "--help").stdout
    assert f"default: {cfg.max_new_tokens}" in help_text and f"default: {cfg.max_budget}" in help_text
