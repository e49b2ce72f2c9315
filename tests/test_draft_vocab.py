"""Drafts with a reduced output head (specexec.draft_vocab): proposals only from the subset, as
full token ids; every method still equals the target's own greedy decoding, including where
the target's next token lies outside the draft's subset; the ranking file and its loading."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from specexec import SpecExecEngine
from specexec.draft_vocab import (VOCAB_FILE, SubsetHead, draft_vocab_value, expected_counts, head_tokens,
                                  output_vocab_size, parse_draft_vocab, ranking_from_counts, reduce_head, select,
                                  write_vocab)
from specexec.drafts import default_draft
from specexec.errors import ConfigError, ModelLoadError
from specexec.models import load_model, truncated_copy

from conftest import EVERY_METHOD, assert_greedy_equal, greedy_reference, tiny_model

PROMPTS = [[5, 17, 3, 40], [1, 2, 3, 4, 5, 6, 7], [60, 12]]


def target_and_subset(vocab=64, keep=24, seed=3):
    """A tiny target, and a subset of its vocabulary that misses some of its greedy tokens."""
    target = tiny_model("llama", seed=seed, vocab=vocab, layers=3, hidden=32)
    greedy = {t for p in PROMPTS for t in greedy_reference(target, p, 24)}
    inside = sorted(greedy)[: len(greedy) // 2]  # half of the target's greedy tokens are in the subset
    rest = [t for t in range(vocab) if t not in greedy]
    subset = sorted(inside + rest[: keep - len(inside)])
    assert greedy - set(subset), "some greedy tokens must lie outside the subset"
    return target, subset


def reduced_draft(target, subset):
    return reduce_head(truncated_copy(target, 1), subset)


def test_subset_head_scores_its_tokens_at_their_ids():
    model = tiny_model("llama", seed=1, vocab=64, layers=1, hidden=32)
    full = model.get_output_embeddings()
    ids = [3, 9, 10, 33, 63]
    reduce_head(model, ids)
    head = model.get_output_embeddings()
    assert isinstance(head, SubsetHead) and head_tokens(model) == 5 and output_vocab_size(model) == 64
    hidden = torch.randn(7, 32, dtype=torch.float64)
    got, want = head(hidden), full(hidden)
    assert got.shape == (7, 64)
    assert torch.allclose(got[:, ids], want[:, ids], rtol=0, atol=1e-12)  # a smaller matmul: rounding only
    assert torch.isneginf(got[:, [i for i in range(64) if i not in ids]]).all()
    # the best token of the reduced head is the best of the full head among the subset, as a full id
    assert torch.equal(got.argmax(-1), torch.tensor(ids)[want[:, ids].argmax(-1)])
    with pytest.raises(ConfigError, match="already reduced"):
        reduce_head(model, ids)
    for bad in ([], [1, 1], [64], [-1]):
        with pytest.raises(ConfigError, match="distinct token ids"):
            reduce_head(tiny_model("llama", vocab=64, layers=1, hidden=32), bad)


@pytest.mark.parametrize("method,tree", EVERY_METHOD, ids=lambda x: x if isinstance(x, str) else "")
def test_greedy_equals_the_target_with_a_reduced_draft(method, tree):
    target, subset = target_and_subset()
    engine = SpecExecEngine(target, None, reduced_draft(target, subset))
    for prompt in PROMPTS:
        got = engine.generate(prompt, method=method, max_new_tokens=24, temperature=0, **tree).token_ids
        assert_greedy_equal(target, prompt, got, greedy_reference(target, prompt, 24), f"{method} {tree}")


def test_proposals_come_from_the_subset_and_the_sequence():
    """Proposals: the subset's tokens, and those of the prompt and of what was emitted before."""
    target, subset = target_and_subset()
    full_draft = truncated_copy(target, 1)
    draft = reduced_draft(target, subset)
    engine = SpecExecEngine(target, None, draft)
    prompt = [5, 17, 3, 40, 61, 62]
    assert set(prompt) - set(subset)
    seen, firsts, outside = set(prompt), [], set()

    def watch(index, tree, accepted, own):
        tokens = tree.tokens[1:tree.size].tolist()
        assert set(tokens) <= set(subset) | seen, f"pass {index} proposed tokens never seen"
        outside.update(set(tokens) - set(subset))
        if index == 0:
            firsts.append(tokens)
        seen.update(tree.tokens[accepted[1:]].tolist() + [own])

    engine.tree_watchers.append(watch)
    settings = dict(max_new_tokens=16, temperature=0, max_budget=32, max_n_beams=4, max_branch_width=8, max_beam_len=6)
    engine.generate(prompt, **settings)
    assert outside, "tokens of the sequence outside the subset were proposed"
    # the root's children: the full draft's 8 best tokens among the subset and the prompt, as full ids
    allowed = sorted(set(subset) | set(prompt))
    with torch.no_grad():
        logits = full_draft(torch.tensor([prompt])).logits[0, -1]
    best = torch.tensor(allowed)[logits[allowed].topk(8).indices].tolist()
    assert set(best) <= set(firsts[0])

    # the next sequence starts from the subset again
    head = draft.get_output_embeddings()
    other = [7, 8, 9]
    out = engine.generate(other, **settings).token_ids
    assert set(other) - set(subset) <= set(head.context_tokens) <= (set(other) | set(out)) - set(subset)
    assert not (set(head.context_tokens) & (set(prompt) - set(other) - set(out)))

    # without following the sequence: the subset only
    head.follow_context = False
    engine.tree_watchers[:] = []
    proposed = set()
    engine.tree_watchers.append(lambda i, tree, a, o: proposed.update(tree.tokens[1:tree.size].tolist()))
    engine.generate(prompt, **settings)
    assert proposed and proposed <= set(subset)


def test_context_tokens_get_the_full_heads_rows():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(40, 8, generator=gen, dtype=torch.float64), torch.randn(40, generator=gen, dtype=torch.float64)
    ids = torch.tensor([2, 5, 11])
    head = SubsetHead(weight[ids], ids, 40, bias[ids], source=weight, source_bias=bias)
    hidden = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    full = torch.nn.functional.linear(hidden, weight, bias)
    head.add_context(torch.tensor([5, 30, 30, 7, 99, -1]))  # known, repeated and out-of-range ids are ignored
    assert head.context_tokens == [7, 30]
    head.add_context([7, 12])
    assert head.context_tokens == [7, 30, 12]
    got = head(hidden)
    scored = [2, 5, 7, 11, 12, 30]
    assert torch.allclose(got[:, scored], full[:, scored], rtol=0, atol=1e-12)
    assert torch.isneginf(got[:, [i for i in range(40) if i not in scored]]).all()
    head.reset_context()
    assert head.context_tokens == [] and torch.isneginf(head(hidden)[:, 30]).all()
    head.follow_context = False
    head.add_context([30])
    assert head.context_tokens == []
    # a head built without the full rows scores its subset only
    bare = SubsetHead(weight[ids], ids, 40)
    bare.add_context([30])
    assert bare.context_tokens == []


def test_target_tokens_outside_the_subset_are_emitted():
    """Where the target's greedy token is not in the subset, the target's own token is emitted."""
    target, subset = target_and_subset()
    engine = SpecExecEngine(target, None, reduced_draft(target, subset))
    out = engine.generate(PROMPTS[1], max_new_tokens=24, temperature=0, max_budget=16).token_ids
    assert set(out) - set(subset)


def test_ranking_is_by_expected_count():
    class Ex:
        def __init__(self, ids, logp):
            self.top_ids, self.top_logp = torch.tensor(ids), torch.tensor(logp).log()

    examples = [Ex([[4, 2], [2, 9]], [[0.5, 0.4], [0.9, 0.1]]), Ex([[9, 4]], [[0.6, 0.3]])]
    counts = expected_counts(examples, 16)
    assert counts[2] == pytest.approx(1.3) and counts[4] == pytest.approx(0.8) and counts[9] == pytest.approx(0.7)
    ranking = ranking_from_counts(counts)
    assert ranking == [2, 4, 9]
    data = {"ranking": ranking, "k": 2, "vocab_size": 16}
    assert select(data, 2, 16) == [2, 4]
    assert select(data, 2, 16, always={15}) == [2, 4, 15]
    assert select(data, 5, 16) == [2, 4, 9, 0, 1]  # unseen tokens follow in id order
    with pytest.raises(ModelLoadError, match="for 16 tokens"):
        select(data, 2, 32)


def test_draft_vocabulary_values():
    assert parse_draft_vocab(None) is None and parse_draft_vocab("full") == "full" and parse_draft_vocab("12") == 12
    for bad in ("0", "-3", "lots", 2.5):
        with pytest.raises(ConfigError, match="'full' or a positive number"):
            parse_draft_vocab(bad)
    assert draft_vocab_value(" FULL ") == "full"
    with pytest.raises(argparse.ArgumentTypeError):
        draft_vocab_value("x")


@pytest.fixture
def folders(tmp_path):
    from experiments_tiny import save_tiny_models

    draft, target = save_tiny_models(tmp_path)
    vocab = json.loads((tmp_path / "draft" / "config.json").read_text())["vocab_size"]
    write_vocab(tmp_path / "draft", list(range(vocab - 1, 20, -1)), 10, vocab_size=vocab, source="test", positions=1,
                coverage=0.5)
    return draft, target, vocab


def test_a_draft_folder_brings_its_head(folders):
    draft, target, vocab = folders
    engine = SpecExecEngine.from_pretrained(target, draft)  # drivable: the probe compares the scored tokens
    head = engine.draft.get_output_embeddings()
    eos = 2  # the tiny models' EOS is kept with the 10 most frequent tokens
    assert isinstance(head, SubsetHead) and head.token_ids.tolist() == [eos] + list(range(vocab - 10, vocab))
    res = engine.generate("what is the tallest mountain", max_new_tokens=12, temperature=0)
    assert res.token_ids == greedy_reference(engine.target, res.prompt_token_ids, 12, {eos})[:len(res.token_ids)]
    assert head_tokens(SpecExecEngine.from_pretrained(target, draft, draft_vocab=4).draft) == 5
    assert head_tokens(SpecExecEngine.from_pretrained(target, draft, draft_vocab="full").draft) == vocab
    assert head_tokens(SpecExecEngine.from_pretrained(target, draft, draft_vocab=vocab).draft) == vocab


def test_bad_rankings_and_drafts_without_one(folders):
    draft, target, vocab = folders
    loaded = load_model(target)
    (Path(draft) / VOCAB_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        default_draft(draft, loaded)
    (Path(draft) / VOCAB_FILE).unlink()
    assert head_tokens(default_draft(draft, loaded)[0]) == vocab
    with pytest.raises(ConfigError, match="no token ranking"):
        default_draft(draft, loaded, draft_vocab=8)
    with pytest.raises(ConfigError, match="needs a draft with a token ranking"):
        default_draft("self", loaded, draft_vocab=8)


def test_distill_writes_the_ranking_of_the_teacher_data(tmp_path):
    from specexec.commands.distill import save_draft_vocab
    from specexec.distill.teacher import generate_examples
    from specexec.distill.train import TrainConfig

    target = tiny_model("llama", seed=3, vocab=64, layers=3, hidden=32, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 64, (5,), generator=gen).tolist() for _ in range(12)]
    examples = generate_examples(target, prompts, max_new_tokens=12, temperature=0.0, k=8, eos_ids=set(), pad_id=0,
                                 generator=gen)
    student = truncated_copy(target, 1)
    args = argparse.Namespace(draft_vocab=20, init=None, top_k=8, data=["prompts:x"])
    info = save_draft_vocab(args, student, target, examples, examples[:3], tmp_path, TrainConfig(seq_len=64),
                            log=lambda m: None)
    data = json.loads((tmp_path / VOCAB_FILE).read_text())
    counts = expected_counts(examples, 64)
    assert data["k"] == 20 and data["ranking"] == ranking_from_counts(counts)
    assert data["expected_mass_in_top_k"] == pytest.approx(float(counts[data["ranking"][:20]].sum() / counts.sum()),
                                                           abs=1e-6)
    assert info["eval_reduced_head"]["top1"] <= info["eval_full_head"]["top1"]
