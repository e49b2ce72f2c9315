"""The draft's own dtype (``draft_dtype``): the draft only proposes, so computing it in bfloat16 next to
a float32 target must leave every method's output equal to the target's own greedy decoding; 'auto'
picks bfloat16 only where the CPU multiplies it natively; settings that cannot apply are refused."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import specexec.drafts as drafts
from specexec import SpecExecEngine
from specexec.budget import cache
from specexec.distill.data import strip_llama2_template
from specexec.drafts import default_draft, resolve_draft_dtype
from specexec.errors import ConfigError
from specexec.models import LoadedModel

from conftest import assert_greedy_equal, greedy_reference, load_prompts, tiny_model

METHODS = [
    ("specexec", dict(max_budget=16, max_n_beams=4, max_branch_width=4, max_beam_len=6)),
    ("specinfer", dict(max_n_beams=4, max_beam_len=5)),
    ("chain", dict(max_beam_len=6)),
]


@pytest.mark.parametrize("family, extra", [("llama", {}), ("mistral", dict(sliding_window=8)),
                                           ("qwen2", dict(use_sliding_window=True, sliding_window=8,
                                                          max_window_layers=1, layers=3))])
def test_a_bfloat16_draft_leaves_every_method_greedy_exact(family, extra):
    target = tiny_model(family, seed=1, dtype=torch.float32, initializer_range=0.4, **extra)
    loaded = LoadedModel(target, None, "tiny")
    draft, _ = default_draft("truncated:1", loaded, draft_dtype="bfloat16")
    assert next(draft.parameters()).dtype == torch.bfloat16
    assert next(target.parameters()).dtype == torch.float32  # the target is untouched
    engine = SpecExecEngine(target, None, draft)
    for prompt in ([5], list(range(3, 26))):  # the second is longer than the window
        want = greedy_reference(target, prompt, 20)
        for method, settings in METHODS:
            got = engine.generate(prompt, method=method, max_new_tokens=20, temperature=0.0, **settings)
            assert_greedy_equal(target, prompt, got.token_ids, want, f"{family}/{method}")


def test_auto_is_bfloat16_only_for_a_float32_target_on_a_cpu_with_native_bfloat16(monkeypatch):
    target = tiny_model("llama", dtype=torch.float32)
    monkeypatch.setattr(drafts, "native_bfloat16", lambda: True)
    assert resolve_draft_dtype("auto", target) == torch.bfloat16
    assert resolve_draft_dtype(None, target, "model") == torch.bfloat16
    assert resolve_draft_dtype("auto", target, "self") is None  # the draft is the target
    assert resolve_draft_dtype("auto", target, "default", quantize="int8") is None
    assert resolve_draft_dtype("auto", target.to(torch.bfloat16)) is None  # the target's dtype already
    assert resolve_draft_dtype("auto", tiny_model("llama", dtype=torch.float32).to("meta")) is None  # not a CPU
    monkeypatch.setattr("specexec.quantize.describe", lambda model: "Int8Tensor (torchao)")
    assert resolve_draft_dtype("auto", target.to(torch.float32)) is None  # a quantized target
    monkeypatch.undo()
    monkeypatch.setattr(drafts, "native_bfloat16", lambda: False)
    assert resolve_draft_dtype("auto", target.to(torch.float32)) is None
    # asked for by name, whatever the CPU
    assert resolve_draft_dtype("float16", target) == torch.float16
    assert resolve_draft_dtype(torch.bfloat16, target) == torch.bfloat16


def test_draft_dtypes_that_cannot_apply_are_refused(monkeypatch):
    target = tiny_model("llama", dtype=torch.float32)
    with pytest.raises(ConfigError, match="unknown dtype 'int3'; choose one of auto, float32, bfloat16"):
        resolve_draft_dtype("int3", target)
    with pytest.raises(ConfigError, match="does not apply to --draft self"):
        resolve_draft_dtype("bfloat16", target, "self")
    assert resolve_draft_dtype("float32", target, "self") is None  # the target's own dtype: nothing to do
    with pytest.raises(ConfigError, match="applies to a named --draft model only"):
        resolve_draft_dtype("bfloat16", target, "truncated", quantize="int8")
    assert resolve_draft_dtype("float32", target, "truncated", quantize="int8") is None  # nothing to convert
    monkeypatch.setattr("specexec.quantize.describe", lambda model: "nf4 (bitsandbytes)")
    with pytest.raises(ConfigError, match="applies to a named --draft model only"):
        resolve_draft_dtype("bfloat16", target, "default")
    assert resolve_draft_dtype("bfloat16", target, "model") == torch.bfloat16


def test_refusals_come_before_any_model_loads():
    """The target named here does not exist: a refusal must come first, not the failed load."""
    with pytest.raises(ConfigError, match="does not apply to --draft self"):
        SpecExecEngine.from_pretrained("./no-such-model", "self", dtype="float32", draft_dtype="bfloat16")
    with pytest.raises(ConfigError, match="--draft-quantize on a copy of the target"):
        SpecExecEngine.from_pretrained("./no-such-model", "truncated:1", draft_quantize="int8", draft_dtype="bfloat16")
    with pytest.raises(ConfigError, match="unknown dtype 'half'"):
        SpecExecEngine.from_pretrained("./no-such-model", None, draft_dtype="half")


def test_the_reduced_head_keeps_the_sequence_rows_in_its_own_dtype():
    """Rows taken for the sequence's tokens before a .to() follow it, and rows taken after it are in the new dtype."""
    from specexec.draft_vocab import SubsetHead

    full = torch.randn(50, 8)
    head = SubsetHead(full[:10], torch.arange(10), 50, source=full)
    head.add_context([20, 21])
    head.to(torch.bfloat16)
    hidden = torch.randn(3, 8, dtype=torch.bfloat16)
    out = head(hidden)
    assert out.dtype == torch.bfloat16
    head.add_context([30])
    out = head(hidden)
    assert torch.isfinite(out[:, [0, 9, 20, 21, 30]]).all() and torch.isinf(out[:, 40]).all()
    assert torch.equal(out[:, 30], hidden @ full[30].to(torch.bfloat16))
    assert head.context_tokens == [20, 21, 30]
    assert "_extra_weight" not in head.state_dict()  # decoding state, not part of a saved draft


def test_the_cost_profile_is_kept_apart_per_draft_dtype():
    target = tiny_model("llama", dtype=torch.float32)
    draft = tiny_model("llama", seed=2, dtype=torch.float32, layers=1)
    a = cache.profile_key(target, draft)
    b = cache.profile_key(target, draft.to(torch.bfloat16))
    assert a["draft_dtype"] == "torch.float32" and b["draft_dtype"] == "torch.bfloat16"
    assert cache.profile_path(Path("/x"), a) != cache.profile_path(Path("/x"), b)
    assert cache.profile_key(target, None)["draft_dtype"] is None  # profiling with no draft


def test_the_shipped_draft_in_bfloat16_is_greedy_exact_and_agrees_as_much(embedded):
    """The shipped draft's reduced head also scores the sequence's tokens (rows taken while decoding): in
    bfloat16 those rows must follow the head's dtype."""
    model, tokenizer = embedded
    loaded = LoadedModel(model, tokenizer, "embedded")
    draft16 = default_draft(None, loaded, draft_dtype="bfloat16")[0]
    draft32 = default_draft(None, loaded, draft_dtype="float32")[0]
    assert next(draft16.parameters()).dtype == torch.bfloat16 and next(draft32.parameters()).dtype == torch.float32
    per_pass = {}
    for name, draft in (("bfloat16", draft16), ("float32", draft32)):
        engine = SpecExecEngine(model, tokenizer, draft, draft_tokenizer=tokenizer)
        tokens = passes = 0
        for i, text in load_prompts("oasst")[:2]:
            ids = engine.encode(strip_llama2_template(text), chat=True)
            want = greedy_reference(model, ids, 32, eos_ids=engine.eos_ids)
            got = engine.generate(ids, method="specexec", max_new_tokens=32, max_budget=16, temperature=0.0)
            assert_greedy_equal(model, ids, got.token_ids, want, f"oasst {i} draft {name}")
            tokens, passes = tokens + got.stats.new_tokens, passes + got.stats.target_passes
        per_pass[name] = tokens / passes
    assert per_pass["bfloat16"] >= 0.85 * per_pass["float32"], per_pass
    assert per_pass["bfloat16"] > 1.5


def test_a_nonsense_draft_dtype_is_a_one_line_error():
    out = subprocess.run([sys.executable, "-m", "specexec", "generate", "--prompt", "hi", "--draft-dtype", "int3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--draft-dtype: invalid choice: 'int3'" in out.stderr
    assert "Traceback" not in out.stderr
