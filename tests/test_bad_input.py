"""Bad input gets a clear error, from the API and from the command line (no traceback)."""

import os
import subprocess
import sys

import pytest
import torch

from specexec import SpecExecEngine
from specexec.config import GenerationConfig
from specexec.errors import ConfigError, ModelLoadError, PromptError, TokenizerMismatchError
from specexec.models import load_model

from conftest import tiny_model


@pytest.fixture(scope="module")
def engine():
    target = tiny_model("llama", seed=1, max_positions=64)
    return SpecExecEngine(target, None, tiny_model("llama", seed=2, layers=1, max_positions=64))


def test_empty_prompt(engine):
    with pytest.raises(PromptError, match="empty"):
        engine.generate([])


def test_prompt_longer_than_context(engine):
    with pytest.raises(PromptError, match="context"):
        engine.generate(list(range(10)) * 7)


def test_generation_stops_at_the_context_end(engine):
    res = engine.generate(list(range(60)), max_new_tokens=50, max_budget=16)
    assert len(res.prompt_token_ids) + len(res.token_ids) <= 64
    assert res.stats.stop_reason == "context"


def test_out_of_vocabulary_ids(engine):
    with pytest.raises(PromptError, match="token ids"):
        engine.generate([1, 2, 1000])


@pytest.mark.parametrize("field,value", [("max_budget", 0), ("max_budget", -5), ("max_new_tokens", 0),
                                         ("max_beam_len", 0), ("max_n_beams", -1), ("decay", 0.0),
                                         ("min_log_prob", 1.0), ("method", "beam")])
def test_bad_generation_settings(engine, field, value):
    with pytest.raises(ConfigError, match=field if field != "method" else "unknown method"):
        engine.generate([1, 2, 3], **{field: value})


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.01])
def test_top_p_outside_unit_interval(engine, top_p):
    with pytest.raises(ConfigError, match="top_p"):
        engine.generate([1, 2], temperature=1.0, top_p=top_p)


def test_unknown_option(engine):
    with pytest.raises(ConfigError):
        engine.generate([1, 2], budget_of_doom=3)


def test_method_needing_a_draft():
    engine = SpecExecEngine(tiny_model("llama"), None, None)
    with pytest.raises(ConfigError, match="draft"):
        engine.generate([1, 2], method="specexec")
    assert len(engine.generate([1, 2], method="autoregressive", max_new_tokens=3).token_ids) == 3


def test_mismatched_vocabularies():
    with pytest.raises(TokenizerMismatchError, match="vocabulary"):
        SpecExecEngine(tiny_model("llama", vocab=64), None, tiny_model("llama", vocab=80))


def test_mismatched_tokenizers(embedded):
    target, tok = embedded
    from transformers import GPT2TokenizerFast
    from tokenizers import Tokenizer, models

    other = GPT2TokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ"):
        SpecExecEngine(target, tok, target, draft_tokenizer=other)


def test_unknown_models():
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("./no/such/folder")
    with pytest.raises(ModelLoadError, match="hub"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelLoadError, match="GGUF"):
        load_model("/tmp/missing-model.gguf")


def run_cli(*args, stdin=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "specexec", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "hi", "--budget", "0"], "a budget is a positive integer or 'auto', not '0'"),
    (["--prompt", "hi", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["--prompt", "hi", "--target", "no-such-org/no-such-model"], "could not load model 'no-such-org/no-such-model'"),
    (["--prompt", "hi", "--draft", "./missing-draft"], "not found"),
])
def test_cli_errors_are_clean(args, message, capsys):
    """The first case through the real entry point (a subprocess), the others in-process."""
    if args == ["--prompt", ""]:
        proc = run_cli("generate", *args)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = main_in_process(capsys, "generate", *args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


def main_in_process(capsys, *args):
    """(exit status, standard error) of ``specexec ARGS`` run through the command line's main."""
    from specexec.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def test_cli_rejects_nonsense_flags(capsys):
    proc = run_cli("generate", "--prompt", "hi", "--budget", "lots")
    assert proc.returncode == 2 and "a budget is a positive integer or 'auto'" in proc.stderr
    assert "Traceback" not in proc.stderr
    code, err = main_in_process(capsys, "generate", "--prompt", "hi", "--method", "magic")
    assert code == 2 and "invalid choice" in err
    code, err = main_in_process(capsys, "generate", "--prompt", "hi", "--draft-vocab", "most")
    assert code == 2 and "draft vocabulary must be 'full' or a positive number of tokens" in err
