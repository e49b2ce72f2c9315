"""End-to-end runs of the paper's three commands on tiny random models, scaled down.

Every summary value is recomputed from the JSONL test records. One run is stopped with SIGINT
in a real subprocess and must leave a valid JSONL with the tests that finished.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from experiments_tiny import save_tiny_models
from specexec.experiments.loop import main
from specexec.experiments.report import read_jsonl

REPO = Path(__file__).resolve().parents[1]
PAPER_COLUMNS = "beams max_h budget minLP branch t0 t1 tree_h tree_size min_CLP exp_time gen_rate gen_speed mem_use".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny"))


def run_exp(tiny, save_dir, *argv) -> int:
    draft, target = tiny
    return main(["--model_0", draft, "--model_1", target, "--save_dir", str(save_dir), "--no_progress",
                 "--max_new_tokens=4", *argv], prog="run_exp.py")


def check_consistent(exp_dir: Path, n_configs: int, n_tests: int) -> tuple[list[dict], pd.DataFrame]:
    """The files exist, every column is there, and the summary agrees with the test records."""
    for name in ("run.log", "results.jsonl", "summary.csv", "plot.png"):
        assert (exp_dir / name).is_file(), name
    records = read_jsonl(exp_dir / "results.jsonl")
    assert len(records) == len((exp_dir / "results.jsonl").read_text().splitlines())  # every line is JSON
    assert records[0]["msg_type"] == "config" and records[-1] == {"msg_type": "end", "status": "finished"}
    tests = [r for r in records if r["msg_type"] == "test"]
    summaries = [r for r in records if r["msg_type"] == "summary"]
    assert len(tests) == n_configs * n_tests and len(summaries) == n_configs
    csv = pd.read_csv(exp_dir / "summary.csv")
    assert set(PAPER_COLUMNS) <= set(csv.columns) and len(csv) == n_configs
    for t in tests:
        assert t["new_tokens"] == len(t["token_ids"]) == sum(t["accepted_per_pass"]) <= 4
        assert t["target_passes"] == len(t["accepted_per_pass"]) and isinstance(t["text"], str)
        assert "prompt_id" in t
    for i, s in enumerate(summaries):
        mine = [t for t in tests if t["config"] == s["config"]]
        assert len(mine) == n_tests == s["tests"]
        new, passes = sum(t["new_tokens"] for t in mine), sum(t["target_passes"] for t in mine)
        secs = sum(t["seconds"] for t in mine)
        sizes = [x for t in mine for x in t["tree_sizes"]]
        depths = [x for t in mine for x in t["tree_depths"]]
        expect = {
            "gen_rate": new / passes, "gen_speed": new / secs,
            "t0": sum(t["draft_seconds"] for t in mine) / passes,
            "t1": sum(t["target_seconds"] for t in mine) / passes,
            "tree_size": sum(sizes) / len(sizes), "tree_h": sum(depths) / len(depths),
        }
        for key, value in expect.items():
            assert math.isclose(s[key], value, rel_tol=1e-9), key
            assert math.isclose(csv[key][i], value, rel_tol=0, abs_tol=0.06 + 1e-3 * value), key
        assert s["new_tokens"] == new and s["exp_time"] >= secs and s["mem_use"] > 0
        drafted = [a - 1 for t in mine for a in t["accepted_per_pass"]]
        assert s["reach"] == [sum(a >= k for a in drafted) / len(drafted) for k in range(1, max(drafted) + 1)]
        if s["method"] == "specexec":
            assert max(sizes) <= s["budget"]
    return summaries, csv


def test_sx_sample(tiny, tmp_path, capsys):
    rc = run_exp(tiny, tmp_path, "--top_p", "0.9", "--temperature", "0.6", "--gen_type", "SpecExecBase",
                 "--max_budget=4, 8", "--n_tests=2", "--exp_name=SX_sample", "-b", "4", "-m", "4")
    out = capsys.readouterr().out
    assert rc == 0
    summaries, csv = check_consistent(tmp_path / "SX_sample", n_configs=2, n_tests=2)
    assert list(csv["budget"]) == [4, 8] and set(csv["beams"]) == {4} and "speedup" not in csv.columns
    assert out.count("new tokens") == 4 and "tokens/pass" in out  # one line per test
    assert "SUMMARY SX_sample" in out and "gen_speed" in out and "chat template: auto" in out
    log = (tmp_path / "SX_sample" / "run.log").read_text()
    assert log.count("new tokens") == 4 and "gen_rate" in log


def test_si_sample(tiny, tmp_path):
    rc = run_exp(tiny, tmp_path, "--temperature", "0.6", "--top_p", "0.9", "--gen_type", "SI",
                 "--max_beam_len=2, 4", "--max_n_beams=2, 3", "--n_tests=1", "--exp_name=SI_sample")
    assert rc == 0
    summaries, csv = check_consistent(tmp_path / "SI_sample", n_configs=4, n_tests=1)
    assert csv["budget"].isna().all() and set(csv["method"]) == {"specinfer"}
    for s in summaries:
        assert s["tree_size"] <= s["beams"] * s["max_h"]


def test_zero_baseline_counts_real_tokens(tiny, tmp_path, capsys):
    rc = run_exp(tiny, tmp_path, "--top_p", "0.9", "--temperature", "0.6", "--zero", "--n_tests=3",
                 "--chat_template", "none")
    assert rc == 0
    summaries, csv = check_consistent(tmp_path / "experiment", n_configs=1, n_tests=3)
    assert list(csv["method"]) == ["autoregressive"] and summaries[0]["gen_rate"] == 1.0
    assert "speedup" not in csv.columns  # nothing to compare with
    records = read_jsonl(tmp_path / "experiment" / "results.jsonl")
    assert records[0]["temperature"] == 0.6 and records[0]["top_p"] == 0.9
    assert all(not r["chat"] for r in records if r["msg_type"] == "test")
    assert "chat template: none" in capsys.readouterr().out


def test_speedup_column_with_baseline_in_the_same_run(tiny, tmp_path):
    rc = run_exp(tiny, tmp_path, "--zero", "-g", "SpecExecBase", "--max_budget", "4", "-b", "4", "-m", "3",
                 "--n_tests=1", "--exp_name=both", "-t", "0609")
    assert rc == 0
    summaries, csv = check_consistent(tmp_path / "both", n_configs=2, n_tests=1)
    base = summaries[0]
    assert base["method"] == "autoregressive" and base["speedup"] == 1.0
    assert math.isclose(summaries[1]["speedup"], summaries[1]["gen_speed"] / base["gen_speed"])
    assert "speedup" in csv.columns
    # a second run of the same name goes to a new folder, never mixed into the first
    assert run_exp(tiny, tmp_path, "--zero", "--n_tests=1", "--exp_name=both", "--no_plot") == 0
    assert (tmp_path / "both_2" / "results.jsonl").is_file()


def test_plot_command(tiny, tmp_path):
    from specexec.cli import main as cli_main

    assert run_exp(tiny, tmp_path, "-g", "chain", "-m", "2,3", "--n_tests=1", "--exp_name=p", "--no_plot") == 0
    exp = tmp_path / "p"
    assert not (exp / "plot.png").exists()
    assert cli_main(["plot", str(exp)]) == 0
    assert (exp / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["plot", str(tmp_path)]) == 2  # not an experiment folder: a clean error


def test_crash_keeps_finished_tests_and_prints_their_summary(tiny, tmp_path, capsys, monkeypatch):
    from specexec.engine import SpecExecEngine

    real, calls = SpecExecEngine.generate, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:  # warm-up + 2 tests, then a crash
            raise RuntimeError("simulated failure")
        return real(self, *a, **k)

    monkeypatch.setattr(SpecExecEngine, "generate", flaky)
    with pytest.raises(RuntimeError):
        run_exp(tiny, tmp_path, "--n_tests=5", "--exp_name=crash", "-b", "2", "-m", "2", "--max_budget", "4")
    records = read_jsonl(tmp_path / "crash" / "results.jsonl")
    tests = [r for r in records if r["msg_type"] == "test"]
    summary = [r for r in records if r["msg_type"] == "summary"]
    assert len(tests) == 2 and summary[0]["tests"] == 2 and summary[0]["complete"] is False
    assert records[-1] == {"msg_type": "end", "status": "crashed"}
    assert "run crashed" in capsys.readouterr().out


def test_sigint_leaves_a_valid_jsonl(tiny, tmp_path):
    draft, target = tiny
    cmd = [sys.executable, str(REPO / "run_exp.py"), "--model_0", draft, "--model_1", target,
           "--save_dir", str(tmp_path), "--exp_name", "stop", "--n_tests", "30", "--max_new_tokens", "4",
           "-b", "2", "-m", "2", "--max_budget", "4,8", "--no_plot"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    jsonl = tmp_path / "stop" / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.read_text().count('"msg_type": "test"') >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = jsonl.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    tests = [r for r in records if r["msg_type"] == "test"]
    summaries = [r for r in records if r["msg_type"] == "summary"]
    assert len(tests) >= 2 and sum(s["tests"] for s in summaries) == len(tests)
    assert records[-1] == {"msg_type": "end", "status": "interrupted"}
    assert "run interrupted" in out and "SUMMARY stop (interrupted" in out
    assert len(pd.read_csv(tmp_path / "stop" / "summary.csv")) == len(summaries)


def test_a_prompt_too_long_is_skipped_and_the_run_goes_on(tiny, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps([0, " ".join(["the"] * 600)]) + "\n" + json.dumps([1, "the river ran"]) + "\n")
    rc = run_exp(tiny, tmp_path, "-d", str(prompts), "--n_tests=2", "-g", "chain", "-m", "2", "--exp_name=long",
                 "--no_plot")
    assert rc == 0
    records = read_jsonl(tmp_path / "long" / "results.jsonl")
    assert [r["prompt_id"] for r in records if r["msg_type"] == "skip"] == [0]
    assert [r["prompt_id"] for r in records if r["msg_type"] == "test"] == [1]
    assert [r["tests"] for r in records if r["msg_type"] == "summary"] == [1]


def test_auto_budget_beside_fixed_budgets_and_the_baseline(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path / "cache"))
    rc = run_exp(tiny, tmp_path, "--zero", "-g", "SpecExecBase", "--max_budget", "4, auto", "-b", "4", "-m", "3",
                 "--n_tests=2", "--exp_name=auto", "--temperature", "0")
    assert rc == 0
    out = capsys.readouterr().out
    records = read_jsonl(tmp_path / "auto" / "results.jsonl")
    summaries = [r for r in records if r["msg_type"] == "summary"]
    assert [s["budget"] for s in summaries] == [None, 4, "auto"]
    tests = {(t["config"], t["prompt_id"]): t for t in records if t["msg_type"] == "test"}
    for (config, prompt), t in tests.items():  # greedy: every configuration gives the baseline's tokens
        assert t["token_ids"] == tests[("AR", prompt)]["token_ids"]
        assert len(t["budgets"]) == (t["target_passes"] if t["method"] == "specexec" else 0)
    auto = summaries[2]
    chosen = [b for t in tests.values() if t["max_budget"] == "auto" for b in t["budgets"]]
    top = max(set(chosen), key=chosen.count)
    assert auto["chosen"].startswith(f"{'AR' if top == 0 else top} {100 * chosen.count(top) / len(chosen):.0f}%")
    csv = pd.read_csv(tmp_path / "auto" / "summary.csv")
    assert list(csv["budget"].fillna("-")) == ["-", "4", "auto"] and "chosen" in csv.columns
    assert "auto" in out and (tmp_path / "cache" / "profiles").is_dir()


def test_acceptance_by_depth_plot(tmp_path):
    from specexec.experiments.plot import plot_acceptance

    rows = [{"method": "autoregressive", "reach": []},
            {"method": "specexec", "config": "SX B16", "reach": [0.8, 0.5, 0.1]},
            {"method": "specinfer", "config": "SI b4 h4", "reach": [0.6]}]
    out = plot_acceptance(rows, tmp_path / "acceptance.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_acceptance(rows[:1], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
