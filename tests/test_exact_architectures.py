"""Greedy exactness on tiny random models of many architectures: every method must
reproduce the target's own greedy decoding (transformers ``generate``) token for token."""

import pytest
import torch

from specexec import SpecExecEngine
from specexec.models import truncated_copy

from conftest import TEST_DEVICE, TINY_FAMILIES, assert_greedy_equal, greedy_reference, tiny_model

METHOD_SETTINGS = [
    ("specexec", dict(max_budget=1)),
    ("specexec", dict(max_budget=16, max_n_beams=4, max_branch_width=4, max_beam_len=6)),
    ("specexec", dict(max_budget=128, max_n_beams=16, max_branch_width=8, max_beam_len=12)),
    ("specinfer", dict(max_n_beams=4, max_beam_len=5)),
    ("chain", dict(max_beam_len=6)),
    ("autoregressive", dict()),
]


def prompts(vocab, count=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(n),), generator=gen).tolist() for n in (1, 23)[:count]]


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_every_method_is_greedy_exact(family):
    # a peaked random target (large init) so that greedy paths are well separated
    target = tiny_model(family, seed=1, initializer_range=0.4, device=TEST_DEVICE)
    # draft = target itself is covered below and in the real-model tests
    drafts = {"truncated": truncated_copy(target, 1),
              "unrelated": tiny_model(family, seed=2, initializer_range=0.4, layers=1, device=TEST_DEVICE)}
    vocab = target.config.vocab_size
    for prompt in prompts(vocab):
        want = greedy_reference(target, prompt, 16)
        for draft_name, draft in drafts.items():
            engine = SpecExecEngine(target, None, draft)
            for method, settings in METHOD_SETTINGS:
                got = engine.generate(prompt, method=method, max_new_tokens=16, temperature=0.0, **settings)
                assert len(got.token_ids) == 16
                assert_greedy_equal(target, prompt, got.token_ids, want,
                                    f"{family}/{draft_name}/{method}/{settings}")


def test_a_draft_that_always_agrees_accepts_whole_paths():
    target = tiny_model("llama", seed=1, initializer_range=0.4, device=TEST_DEVICE)
    engine = SpecExecEngine(target, None, target)
    res = engine.generate([3, 4, 5], method="chain", max_new_tokens=30, max_beam_len=5)
    # each pass accepts the 5 drafted tokens plus one of the target's own
    assert res.stats.accepted_per_pass[:4] == [6, 6, 6, 6]
    # one beam of width one is the draft's greedy chain: SpecExec then accepts it whole too
    res = engine.generate([3, 4, 5], method="specexec", max_new_tokens=30, max_budget=32, max_beam_len=5,
                          max_n_beams=1, max_branch_width=1)
    assert res.stats.accepted_per_pass[:4] == [6, 6, 6, 6]


def test_eos_stops_generation_and_is_never_passed():
    target = tiny_model("llama", seed=1, initializer_range=0.4, device=TEST_DEVICE)
    prompt = [3, 4, 5]
    free = greedy_reference(target, prompt, 30)
    eos = free[10]  # a token the target emits at step 10 (maybe earlier too)
    target.generation_config.eos_token_id = eos
    engine = SpecExecEngine(target, None, truncated_copy(target, 1))
    want = free[: free.index(eos) + 1]
    for method in ("specexec", "specinfer", "chain", "autoregressive"):
        res = engine.generate(prompt, method=method, max_new_tokens=30, max_budget=64)
        assert res.token_ids == want, method
        assert res.stats.stop_reason == "eos"
    target.generation_config.eos_token_id = None
