"""Sliding-window attention: every method equals transformers' greedy decoding on tiny models
whose windows (8 positions) are much shorter than prompt + generation, in tree passes and
single-token passes alike; and the attention layout of each family is read correctly."""

import copy

import pytest
import torch
import transformers

from specexec import SpecExecEngine
from specexec.attention import FULL, SLIDING, attention_layout
from specexec.errors import UnsupportedModelError
from specexec.models import truncated_copy

from conftest import EVERY_METHOD, TEST_DEVICE, WINDOW, assert_greedy_equal, greedy_reference, tiny_model

WINDOWED = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]
SETTINGS = EVERY_METHOD
NEW = 24


def without_window(model):
    """The same weights with the window widened past any sequence here."""
    config = copy.deepcopy(model.config)
    config.sliding_window = 1 << 20
    other = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)
    other.load_state_dict(model.state_dict())
    return other.to(next(model.parameters()).dtype).eval()


def prompts():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (5, 23)]


@pytest.mark.parametrize("family", WINDOWED)
def test_windowed_models_are_greedy_exact(family):
    target = tiny_model(family, seed=1, initializer_range=0.4, device=TEST_DEVICE)
    assert target.config.sliding_window == WINDOW
    wide = without_window(target)
    wants = {tuple(p): greedy_reference(target, p, NEW) for p in prompts()}
    # the window changes the target's own output, so an engine that ignores it cannot pass
    assert any(greedy_reference(wide, list(p), NEW) != w for p, w in wants.items())
    drafts = {"self": target, "truncated": truncated_copy(target, 1)}
    for draft_name, draft in drafts.items():
        engine = SpecExecEngine(target, None, draft)
        for prompt, want in wants.items():
            for method, settings in SETTINGS:
                if draft_name == "self" and method == "autoregressive":
                    continue
                got = engine.generate(list(prompt), method=method, max_new_tokens=NEW, **settings)
                assert_greedy_equal(target, prompt, got.token_ids, want, f"{family}/{draft_name}/{method}/{settings}")
        if draft_name == "self":  # deep trees: the window cuts through tree paths, not just the prefix
            assert max(got.stats.tree_depths) > WINDOW // 2


@pytest.mark.parametrize("family, types", [
    ("llama", (FULL,)), ("mistral", (SLIDING,)), ("phi3", (SLIDING,)), ("qwen2", (FULL, SLIDING)),
    ("gemma2", (SLIDING, FULL)), ("gemma3_text", (SLIDING, FULL)), ("gpt2", (FULL,)),
])
def test_attention_layout_follows_the_config(family, types):
    layout = attention_layout(tiny_model(family, device=TEST_DEVICE))
    assert layout.types == types
    assert layout.window == (WINDOW if SLIDING in types else None)
    assert layout.mapping == (len(types) > 1)


def test_window_counts_positions_not_slots():
    layout = attention_layout(tiny_model("mistral", device=TEST_DEVICE))
    # a key cached long ago at slot 0 but position 100 (e.g. after a commit) is inside the window
    visible = torch.ones(1, 3, dtype=torch.bool)
    mask = layout.masks(visible, torch.tensor([105]), torch.tensor([100, 96, 105]), torch.float32)
    assert mask.shape == (1, 1, 1, 3)
    assert (mask[0, 0, 0] == 0).tolist() == [True, False, True]  # 105 - 96 = 9 >= 8 is out


def test_unknown_attention_types_are_refused():
    model = tiny_model("qwen2", device=TEST_DEVICE)
    model.config.layer_types = ["chunked_attention", "full_attention"]
    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        attention_layout(model)
