"""Rotary schemes that depend on the sequence length: LongRoPE (Phi-3, re-encoding at the
switch; Llama, mixing) and dynamic NTK. Generation crosses the switch; every method must
equal transformers' greedy decoding, and an engine that lets one tree pass straddle the
switch must not."""

import pytest
import torch

from specexec import SpecExecEngine
from specexec.models import truncated_copy
from specexec.rope import length_switch

from conftest import EVERY_METHOD, TEST_DEVICE, assert_greedy_equal, greedy_reference, tiny_model

T = 32  # original_max_position_embeddings: short factors up to here, long ones past it
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.0, 1.0, 1.0], "long_factor": [1.0, 4.0, 16.0, 64.0],
            "rope_theta": 10000.0, "original_max_position_embeddings": T}
SETTINGS = EVERY_METHOD


def longrope_model(family):
    return tiny_model(family, seed=1, initializer_range=0.4, max_positions=128, rope_parameters=dict(LONGROPE),
                      original_max_position_embeddings=T, device=TEST_DEVICE)


def prompts():
    gen = torch.Generator().manual_seed(0)
    # below the switch, one token short of it, and past it from the start
    return [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (20, T, T + 5)]


@pytest.mark.parametrize("family, reencode", [("phi3", True), ("llama", False)])
def test_longrope_crossing_the_switch_is_greedy_exact(family, reencode):
    target = longrope_model(family)
    assert length_switch(target).threshold == T and length_switch(target).reencode == reencode
    for draft_name, draft in {"self": target, "truncated": truncated_copy(target, 1)}.items():
        engine = SpecExecEngine(target, None, draft)
        for prompt in prompts():
            want = greedy_reference(target, prompt, 24)
            for method, settings in SETTINGS:
                got = engine.generate(prompt, method=method, max_new_tokens=24, **settings)
                assert_greedy_equal(target, prompt, got.token_ids, want, f"{family}/{draft_name}/{method}/{settings}")


def test_a_tree_pass_straddling_the_switch_would_be_wrong():
    # the same engine without its length handling: the long factors reach nodes below the switch
    target = longrope_model("phi3")
    engine = SpecExecEngine(target, None, target)
    prompt = prompts()[0]
    want = greedy_reference(target, prompt, 24)
    engine.length_switch = None
    got = engine.generate(prompt, method="specexec", max_new_tokens=24, max_budget=64, max_beam_len=10)
    assert got.token_ids != want


def test_dynamic_ntk_is_exact_up_to_the_context_limit():
    target = tiny_model("llama", seed=1, initializer_range=0.4, max_positions=48,
                        rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
                        device=TEST_DEVICE)
    assert length_switch(target) is None
    prompt = prompts()[0]
    want = greedy_reference(target, prompt, 48 - len(prompt))
    engine = SpecExecEngine(target, None, target)
    for method, settings in SETTINGS:
        got = engine.generate(prompt, method=method, max_new_tokens=100, **settings)
        assert got.stats.stop_reason == "context"
        assert len(prompt) + len(got.token_ids) == 48
        assert_greedy_equal(target, prompt, got.token_ids, want, f"dynamic/{method}/{settings}")
