"""Models the engine cannot drive exactly are refused at load with one line; settings that
would overflow or over-allocate are handled; the CLI turns every user mistake into one line
and exit status 2."""

import json
import math

import pytest
import torch
import transformers

from specexec import SpecExecEngine
from specexec.errors import ConfigError, UnsupportedModelError

from conftest import greedy_reference, tiny_model


def build(config_name, model_name, **kwargs):
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**kwargs)
    return getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize("config_name, model_name, kwargs, reason", [
    ("BloomConfig", "BloomForCausalLM", dict(vocab_size=64, hidden_size=32, n_layer=1, n_head=4), "ALiBi"),
    ("FalconConfig", "FalconForCausalLM", dict(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, alibi=True), "ALiBi"),
    ("MptConfig", "MptForCausalLM", dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4), "ALiBi"),
    ("MambaConfig", "MambaForCausalLM", dict(vocab_size=64, hidden_size=32, num_hidden_layers=1), "recurrent state"),
    ("T5Config", "T5ForConditionalGeneration", dict(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=4,
                                                    d_kv=8), "encoder-decoder"),
])
def test_architectures_without_tree_attention_are_refused(config_name, model_name, kwargs, reason):
    model = build(config_name, model_name, **kwargs)
    with pytest.raises(UnsupportedModelError, match=reason) as err:
        SpecExecEngine(model, None, None)
    assert "\n" not in str(err.value)
    with pytest.raises(UnsupportedModelError, match="draft: .*" + reason):
        SpecExecEngine(tiny_model("llama", vocab=64), None, model)


class IgnoresMask(transformers.LlamaForCausalLM):
    def forward(self, *args, attention_mask=None, **kwargs):
        return super().forward(*args, **kwargs)  # drops the tree mask: every token sees every other


class RejectsMask(transformers.LlamaForCausalLM):
    def forward(self, *args, attention_mask=None, **kwargs):
        if attention_mask is not None and getattr(attention_mask, "ndim", 2) == 4:
            raise ValueError("only 2D padding masks are supported")
        return super().forward(*args, attention_mask=attention_mask, **kwargs)


@pytest.mark.parametrize("cls, reason", [(IgnoresMask, "differs from plain passes"), (RejectsMask, "rejects a 4D")])
def test_the_probe_refuses_models_that_do_not_follow_the_mask(cls, reason):
    reference = tiny_model("llama", seed=1, initializer_range=0.4)
    model = cls(reference.config).to(torch.float64)
    model.load_state_dict(reference.state_dict())
    with pytest.raises(UnsupportedModelError, match=reason):
        SpecExecEngine(model.eval(), None, None)


@pytest.fixture(scope="module")
def engine():
    target = tiny_model("llama", seed=1, initializer_range=0.4)
    return SpecExecEngine(target, None, tiny_model("llama", seed=2, initializer_range=0.4, layers=1))


def test_a_vanishing_temperature_decodes_greedily(engine):
    want = greedy_reference(engine.target, [1, 2, 3], 12)
    for method in ("specexec", "specinfer", "chain", "autoregressive"):
        got = engine.generate([1, 2, 3], method=method, max_new_tokens=12, temperature=5e-324, draft_temperature=1e-45)
        assert got.token_ids == want, method


def test_a_huge_budget_is_capped_by_what_the_tree_can_reach():
    target = tiny_model("llama", seed=1, initializer_range=0.4)
    engine = SpecExecEngine(target, None, tiny_model("llama", seed=2, initializer_range=0.4, layers=1))
    res = engine.generate([1, 2, 3], max_new_tokens=8, max_budget=10**9, max_n_beams=4, max_branch_width=4,
                          max_beam_len=4)
    assert res.token_ids == greedy_reference(engine.target, [1, 2, 3], 8)
    assert engine._tree.capacity <= 2 * 4 * 4 * 4 + 2
    with pytest.raises(ConfigError, match="GiB"):
        engine.generate([1, 2, 3], max_budget=10**9, max_n_beams=10**6, max_branch_width=64, max_beam_len=10**3)
    # a billion chains: no more than the vocabulary can have distinct first tokens
    res = engine.generate([1, 2, 3], method="specinfer", max_new_tokens=8, max_n_beams=10**9, max_beam_len=10**6)
    assert res.token_ids == greedy_reference(engine.target, [1, 2, 3], 8)
    assert engine._tree.capacity <= 64 * 8 + 1
    assert engine.generate([1, 2], max_new_tokens=3).token_ids  # the engine is not left busy


@pytest.mark.parametrize("field, value", [("seed", -1), ("seed", 2**64), ("seed", 1.5), ("draft_temperature", math.nan),
                                          ("draft_temperature", math.inf), ("temperature", math.inf),
                                          ("decay", math.nan), ("min_log_prob", math.nan)])
def test_nonsense_numbers_are_refused(engine, field, value):
    with pytest.raises(ConfigError, match=field):
        engine.generate([1, 2], **{field: value})


def test_cli_errors_before_loading(tmp_path, capsys):
    """In-process through the command line's main (tests/test_bad_input.py runs the real entry point)."""
    from specexec.cli import main

    t5 = tmp_path / "t5-folder"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 64, "d_model": 32}))
    cases = [
        (["--device", "toaster"], "unknown device"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--seed", "-1"], "seed must be an integer"),
        (["--seed", str(2**64)], "seed must be an integer"),
        (["--draft", "truncated:0"], "truncated:K with K >= 1"),
        (["--draft", "truncated:two"], "truncated:K with K >= 1"),
        (["--draft-temperature", "nan"], "draft_temperature"),
        (["--temperature", "inf"], "temperature"),
        (["--target", str(t5)], "cannot load"),
        (["--dtype", "float8"], "unknown dtype"),
    ]
    for args, message in cases:
        capsys.readouterr()
        code = main(["generate", "--prompt", "hi", *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
