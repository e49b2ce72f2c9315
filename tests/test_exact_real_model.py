"""Greedy exactness on the real embedded target (SmolLM2-135M-Instruct).

SpecExec, SpecInfer and chain must reproduce transformers' own greedy decoding of the target
token for token, 64 new tokens (32 in the default run), with two drafts: the target itself ("self") and a truncated
copy of it (its first 4 layers, untrained: "truncated"), at budgets 16 and 128, and at the
extreme budgets 1 and 1024. Prompts: 7 each of the oasst, c4 and wikitext sets (21 in all),
cut to their first 256 tokens. A divergence is accepted only at a numerical tie (target
top-2 logit gap < 1e-4 at the first differing token).

Two sizes of the same matrix:

- ``SPECEXEC_FULL_MATRIX=1``: every (draft, method, budget 16 / 128) cell on all 21 prompts;
  budgets 1 and 1024 on 3 prompts (one per set) for every method with the target as draft
  and for SpecExec with the truncated draft. 44 minutes on 2 CPU cores (docs/exactness.md).
- the default (the README's test command), sized for the suite's time limit: 32 new tokens
  instead of 64; with the target as draft each (method, budget) cell on 2 prompts from two
  sets (12 different prompts across the six cells, four of each set); with the truncated
  draft SpecExec at budget 128 and SpecInfer and chain at 16, on one prompt each (one per set);
  SpecExec at budgets 1 and 1024 on one prompt each (of different sets). Greedy references
  are computed only for the prompts used.

Tree shapes. SpecExec: ``max_budget`` B, 16 beams, branch width 16. SpecInfer: B=16 is 4
chains x 4 tokens, B=128 is 8 x 16 (the truncated draft: 32 x 4), B=1024 is 32 x 32. Chain:
B tokens up to 32 (the truncated draft: 4 at B=16, 8 at B=128). The truncated draft gets
about 1.1-1.4 tokens per target pass, so its trees are kept shallow (4 draft passes):
deeper levels would only add draft passes whose tokens are never accepted.
"""

import os

import pytest

from specexec import SpecExecEngine
from specexec.models import truncated_copy

from conftest import assert_greedy_equal, greedy_reference, load_prompts

FULL = os.environ.get("SPECEXEC_FULL_MATRIX", "") == "1"
NEW_TOKENS = 64 if FULL else 32
PROMPT_TOKENS = 256  # long prompts are cut to their first 256 tokens
PER_SET = 7


def settings(draft, method, budget):
    shallow = draft == "truncated"
    if method == "specexec":
        depth = (8 if budget > 128 else 4) if shallow else 12
        return dict(max_budget=budget, max_n_beams=16, max_branch_width=16, max_beam_len=depth)
    if method == "specinfer":
        shapes = {1: (1, 1), 16: (4, 4), 128: (32, 4) if shallow else (8, 16), 1024: (32, 32)}
        beams, length = shapes[budget]
        return dict(max_n_beams=beams, max_beam_len=length)
    if shallow:
        return dict(max_beam_len={1: 1, 16: 4, 128: 8, 1024: 32}[budget])
    return dict(max_beam_len=min(budget, 32))


def sample(cases, draft, method, budget):
    """The prompts a (draft, method, budget) cell runs on."""
    if FULL:
        return cases
    cell = ["specexec", "specinfer", "chain"].index(method) * 2 + (budget == 128)
    if draft == "self":  # 2 prompts a cell, consecutive in the sets' interleaved order: 12 across the cells
        interleaved = [cases[(i % 3) * PER_SET + i // 3] for i in range(len(cases))]
        return [interleaved[(2 * cell + j) % len(cases)] for j in range(2)]
    # truncated draft: one prompt per cell, each method's from another set
    return [cases[(cell // 2) * PER_SET + cell]]


@pytest.fixture(scope="module")
def cases(embedded):
    target, tok = embedded
    prompts = []
    for name in ("oasst", "c4", "wikitext"):
        for pid, text in load_prompts(name)[:PER_SET]:
            ids = tok(text)["input_ids"][:PROMPT_TOKENS]
            prompts.append((f"{name}-{pid}", ids))
    eos = SpecExecEngine(target, tok).eos_ids
    return [Case(label, ids, target, eos) for label, ids in prompts]


class Case:
    """A prompt and, computed at first use, the target's own greedy continuation."""

    def __init__(self, label, ids, target, eos):
        self.label, self.ids, self._target, self._eos, self._want = label, ids, target, eos, None

    def __iter__(self):  # label, ids, reference
        if self._want is None:
            self._want = greedy_reference(self._target, self.ids, NEW_TOKENS, self._eos)
        return iter((self.label, self.ids, self._want))


@pytest.fixture(scope="module")
def drafts(embedded):
    target, _ = embedded
    return {"self": target, "truncated": truncated_copy(target, 4)}


def check(embedded, drafts, cases, draft_name, method, budget):
    target, tok = embedded
    engine = SpecExecEngine(target, tok, drafts[draft_name], draft_tokenizer=tok)
    shape = settings(draft_name, method, budget)
    limit = tree_limit(shape, method)
    for label, ids, want in cases:
        res = engine.generate(ids, method=method, max_new_tokens=NEW_TOKENS, temperature=0.0, **shape)
        assert_greedy_equal(target, ids, res.token_ids, want, f"{label} {draft_name} {method} budget {budget}")
        if res.stats.stop_reason == "length":
            assert len(res.token_ids) == NEW_TOKENS
        assert max(res.stats.tree_sizes) <= limit


def tree_limit(shape, method):
    """The most drafted tokens a tree of this shape may hold."""
    if method == "specexec":
        return shape["max_budget"]
    if method == "specinfer":
        return shape["max_n_beams"] * shape["max_beam_len"]
    return shape["max_beam_len"]


# every (draft, method, budget) cell in the full matrix; by default the truncated draft runs SpecExec
# at budget 128 and the sampled-chain methods at 16 (its bigger chains add passes, not coverage)
CELLS = [(d, m, b) for d in ("self", "truncated") for m in ("specexec", "specinfer", "chain") for b in (16, 128)
         if FULL or d == "self" or (b == 128) == (m == "specexec")]


@pytest.mark.parametrize("draft,method,budget", CELLS, ids=["-".join(map(str, c)) for c in CELLS])
def test_greedy_exact(embedded, drafts, cases, draft, method, budget):
    chosen = sample(cases, draft, method, budget)
    assert len(chosen) >= (20 if FULL else 1 if draft == "truncated" else 2)
    check(embedded, drafts, chosen, draft, method, budget)


EXTREME_CELLS = [("self", "specexec")] + (
    [("self", "specinfer"), ("self", "chain"), ("truncated", "specexec")] if FULL else []
)


@pytest.mark.parametrize("budget", [1, 1024])
@pytest.mark.parametrize("draft,method", EXTREME_CELLS)
def test_greedy_exact_at_extreme_budgets(embedded, drafts, cases, draft, method, budget):
    # one prompt per set in the full matrix; else one prompt, an oasst one at 1024, a c4 one at 1
    chosen = cases[::PER_SET] if FULL else cases[:1] if budget == 1024 else cases[PER_SET:PER_SET + 1]
    check(embedded, drafts, chosen, draft, method, budget)


def test_default_sample_spreads_over_the_prompt_sets():
    """With the target as draft every cell draws from two sets or more and the cells together use
    12 different prompts (all 21 in the full matrix); the truncated draft's three cells use three
    prompts, one of each set."""
    fake = [(f"{name}-{i}", [i], []) for name in ("oasst", "c4", "wikitext") for i in range(PER_SET)]
    seen = {"self": [], "truncated": []}
    for draft, method, budget in CELLS:
        chosen = sample(fake, draft, method, budget)
        sets = {label.split("-")[0] for label, _, _ in chosen}
        assert len(sets) >= (2 if draft == "self" or FULL else 1)
        seen[draft] += [label for label, _, _ in chosen]
    assert len(set(seen["self"])) == (21 if FULL else 12)
    if not FULL:
        truncated = seen["truncated"]
        assert len(set(truncated)) == 3 and {label.split("-")[0] for label in truncated} == {"oasst", "c4", "wikitext"}


def test_self_draft_accepts_long_paths(embedded, drafts, cases):
    """Drafting with the target itself must accept many tokens per pass (a sanity check that
    verification is not silently rejecting correct drafts)."""
    target, tok = embedded
    engine = SpecExecEngine(target, tok, drafts["self"], draft_tokenizer=tok)
    label, ids, want = cases[0]
    res = engine.generate(ids, method="chain", max_new_tokens=NEW_TOKENS, max_beam_len=8)
    assert res.stats.tokens_per_pass >= 5
