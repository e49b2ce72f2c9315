"""The runner's flags: sweeps, the -t shorthand, configurations, and bad flags failing early."""

from __future__ import annotations

import argparse

import pytest

from specexec.errors import ConfigError
from specexec.experiments import flags
from specexec.experiments.loop import main


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    flags.add_arguments(p)
    return p.parse_args(list(argv))


def test_sweep_lists_with_spaces_none_and_repeats():
    assert flags.parse_sweep("16, 32, 64, 128, 256, 512, 1024", "--max_budget") == [16, 32, 64, 128, 256, 512, 1024]
    assert flags.parse_sweep("8,8 ,16", "-b") == [8, 16]
    assert flags.parse_sweep("128", "-b") == [128]
    assert flags.parse_sweep(None, "--min_log_prob", float) == [None]
    assert flags.parse_sweep("-2.5, None", "--min_log_prob", float) == [-2.5, None]


@pytest.mark.parametrize("value", ["abc", "16,,32", "1.5", ""])
def test_sweep_rejects_non_numbers_naming_the_flag(value):
    with pytest.raises(ConfigError, match="--max_budget"):
        flags.parse_sweep(value, "--max_budget")


def test_temp_shorthand():
    assert flags.parse_temp("0609") == (0.6, 0.9)
    assert flags.parse_temp("1010") == (1.0, 1.0)
    assert flags.parse_temp("0010") == (0.0, 1.0)
    for bad in ("069", "06a9", "06091"):
        with pytest.raises(ConfigError, match="-t/--temp"):
            flags.parse_temp(bad)
    args = parse("-t", "0609", "--temperature", "1.0")
    flags.build_configs(args)
    assert (args.temperature, args.top_p) == (0.6, 0.9)


def test_cartesian_product_of_sweeps_for_specexec():
    args = parse("--max_budget=16, 32, 64", "-b", "8,16", "--min_log_prob", "None,-3")
    configs = flags.build_configs(args)
    assert len(configs) == 3 * 2 * 2
    assert {(c.max_budget, c.max_n_beams, c.min_log_prob) for c in configs} == {
        (b, n, lp) for b in (16, 32, 64) for n in (8, 16) for lp in (None, -3.0)}
    c = configs[0]
    assert c.method == "specexec" and c.generation.max_budget == c.max_budget
    assert c.generation.max_beam_len == 32 and c.generation.max_branch_width == 32  # the paper's defaults
    assert c.generation.max_new_tokens == 32 and c.generation.sampling.temperature == 1.0


def test_si_sweeps_beams_and_length_only():
    configs = flags.build_configs(parse("-g", "SI", "--max_beam_len=8, 16, 32", "--max_n_beams=8, 16, 32"))
    assert len(configs) == 9
    assert all(c.method == "specinfer" and c.max_budget is None and c.max_branch_width is None for c in configs)
    assert {(c.generation.max_n_beams, c.generation.max_beam_len) for c in configs} == {
        (b, h) for b in (8, 16, 32) for h in (8, 16, 32)}


def test_zero_alone_is_the_baseline_and_with_a_gen_type_runs_both():
    only = flags.build_configs(parse("--zero", "--max_budget=16, 32"))
    assert [c.method for c in only] == ["autoregressive"]
    both = flags.build_configs(parse("--zero", "-g", "SpecExecBase", "--max_budget=16, 32"))
    assert [c.method for c in both] == ["autoregressive", "specexec", "specexec"]
    baseline = flags.build_configs(parse("--baseline", "-g", "chain", "-m", "4,8"))
    assert [c.method for c in baseline] == ["autoregressive", "chain", "chain"]
    assert flags.build_configs(parse("-g", "autoregressive"))[0].method == "autoregressive"


def test_dashed_forms_are_accepted():
    args = parse("--max-budget", "16,32", "--n-tests", "3", "--exp-name", "x", "--top-p", "0.5")
    assert (args.max_budget, args.n_tests, args.exp_name, args.top_p) == ("16,32", 3, "x", 0.5)


@pytest.fixture
def no_model_loads(monkeypatch):
    from specexec import engine

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(engine.SpecExecEngine, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("argv, flag", [
    (["--max_budget", "abc"], "--max_budget"),
    (["--max_budget", "16, x"], "--max_budget"),
    (["-b", "0"], "max_n_beams"),
    (["-g", "Medusa"], "-g/--gen_type"),
    (["-d", "nosuchset"], "-d/--dataset"),
    (["-d", "/nonexistent/prompts.json"], "-d/--dataset"),
    (["-t", "6"], "-t/--temp"),
    (["--top_p", "1.5"], "--top_p"),
    (["--n_tests", "0"], "--n_tests"),
    (["--min_log_prob", "1"], "--min_log_prob"),
    (["--offload"], "--offload"),
    (["--model_1", "TheBloke/Mixtral-8x7B-Instruct-v0.1-GPTQ"], "--model_1"),
    (["--dataset_start_index", "100000"], "--dataset_start_index"),
])
def test_bad_flags_fail_before_any_model_loads(argv, flag, tmp_path, capsys, no_model_loads):
    rc = main(["--save_dir", str(tmp_path), "--no_progress", *argv], prog="run_exp.py")
    err = capsys.readouterr().err
    assert rc == 2
    assert flag in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written either


def test_offload_says_why(tmp_path, capsys, no_model_loads, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--offload", "--save_dir", str(tmp_path), "--device_size", "4"]) == 2
    err = capsys.readouterr().err
    assert "--offload cpu needs a CUDA GPU; on a CPU-only machine use --offload disk" in err


@pytest.mark.parametrize("command", [
    '--top_p 0.9 --temperature 0.6 --gen_type SpecExecBase --max_budget="16, 32, 64, 128, 256, 512, 1024" '
    '--n_tests=10 --offload --exp_name="SX_sample_offload"',
    '--top_p 0.9 --temperature 0.6 --gen_type SpecExecBase --model_0 "TheBloke/Mistral-7B-Instruct-v0.2-GPTQ" '
    '--model_1 "TheBloke/Mixtral-8x7B-Instruct-v0.1-GPTQ" --max_n_beams=128 '
    '--max_budget="16,32,64,128,256,512,1024,2048,4096"  --n_tests=10 --exp_name="SX2_mixtral"',
    '--top_p 0.9 --temperature 0.6 --offload --zero --n_tests=10',
    '--model_0 "TheBloke/Mistral-7B-Instruct-v0.2-GPTQ" --model_1 "TheBloke/Mixtral-8x7B-Instruct-v0.1-GPTQ" '
    '--offload --zero --n_tests=10',
])
def test_paper_offload_and_gptq_commands_stop_at_once(command, tmp_path, capsys, no_model_loads, monkeypatch):
    import shlex

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command), prog="run_exp.py") == 2
    err = capsys.readouterr().err
    assert ("CUDA GPU" in err or "GPTQ" in err) and "Traceback" not in err
    assert not any(tmp_path.iterdir())
