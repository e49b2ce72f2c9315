"""Sampling exactness: the distribution of the first three generated tokens equals the
target's, computed exactly by enumeration, for every speculative method.

Tiny target and an unrelated tiny draft over a 4-token vocabulary (64 outcomes). Each
setting draws N = 1000 generations with fixed seeds and runs Pearson's chi-square test
(cells with expected count < 5 pooled). A setting fails when p < ALPHA = 1e-3, so a correct
rule has a 0.1% false-alarm rate per setting (about 1% over the 10 settings below). The
negative controls show the same test at the same N rejects subtly wrong rules (at N = 1000
with p ~ 1e-31 and p ~ 0).
"""

import itertools

import pytest
import torch
from scipy.stats import chisquare

import specexec.methods as methods_module
from specexec import SpecExecEngine
from specexec.config import SamplingConfig
from specexec.sampling import probabilities, sample

from conftest import tiny_model

N = 1000
ALPHA = 1e-3
PROMPT = [1, 2, 3]
TREE = dict(max_budget=8, max_n_beams=2, max_branch_width=4, max_beam_len=3)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    target = tiny_model("llama", seed=1, vocab=4, layers=1, hidden=16, initializer_range=0.5)
    draft = tiny_model("llama", seed=2, vocab=4, layers=1, hidden=16, initializer_range=0.5)
    yield target, draft
    torch.set_num_threads(2)


@torch.no_grad()
def exact_distribution(model, sampling):
    vocab = model.config.vocab_size
    probs = {}
    for seq in itertools.product(range(vocab), repeat=3):
        logits = model(torch.tensor([PROMPT + list(seq[:2])])).logits[0, len(PROMPT) - 1:]
        p = probabilities(logits.double(), sampling)
        probs[seq] = float(p[0, seq[0]] * p[1, seq[1]] * p[2, seq[2]])
    return probs


def chi_square_pvalue(counts, expected_probs, n):
    obs, exp, pooled_obs, pooled_exp = [], [], 0.0, 0.0
    for seq, prob in expected_probs.items():
        if prob * n < 5:
            pooled_obs += counts.get(seq, 0)
            pooled_exp += prob * n
        else:
            obs.append(counts.get(seq, 0))
            exp.append(prob * n)
    if pooled_exp > 0:
        obs.append(pooled_obs)
        exp.append(pooled_exp)
    assert sum(obs) == n
    return chisquare(obs, exp).pvalue


def draw(engine, method, sampling, n=N, tree=TREE, budgets=None):
    counts = {}
    for seed in range(n):
        res = engine.generate(PROMPT, method=method, max_new_tokens=3, temperature=sampling.temperature,
                              top_p=sampling.top_p, seed=seed, **tree)
        seq = tuple(res.token_ids)
        counts[seq] = counts.get(seq, 0) + 1
        if budgets is not None:
            budgets.update(res.stats.budgets)
    return counts


SETTINGS = [SamplingConfig(temperature=t, top_p=p) for t in (0.6, 1.0) for p in (0.9, 1.0)]


# SpecExec at all four settings; the rejection-sampling methods at the two corners (top-p on and
# off, both temperatures), which exercise the same acceptance code
CASES = ([("specexec", s) for s in SETTINGS]
         + [(m, s) for m in ("specinfer", "chain") for s in (SETTINGS[0], SETTINGS[3])])


@pytest.mark.parametrize("method,sampling", CASES, ids=[f"{m}-T{s.temperature}-p{s.top_p}" for m, s in CASES])
def test_first_three_tokens_follow_the_target(models, method, sampling):
    target, draft = models
    engine = SpecExecEngine(target, None, draft)
    expected = exact_distribution(target, sampling)
    counts = draw(engine, method, sampling)
    pvalue = chi_square_pvalue(counts, expected, N)
    assert pvalue > ALPHA, f"{method} {sampling}: chi-square p = {pvalue:.2e}"


@pytest.mark.parametrize("sampling", SETTINGS[2:3], ids=lambda s: f"T{s.temperature}-p{s.top_p}")
def test_auto_budget_follows_the_target(models, sampling, monkeypatch):
    """Budgets chosen pass by pass from what was accepted keep the target's distribution."""
    from specexec.budget import CostProfile
    from specexec.budget import chooser as chooser_module

    # probes unbounded: each seeded call starts a fresh chooser, which then tries several trees
    monkeypatch.setattr(chooser_module, "PROBE_SHARE", 1.0)
    target, draft = models
    engine = SpecExecEngine(target, None, draft)
    # trees cost little next to a target pass: auto drafts, and its choice moves with each acceptance
    engine.use_cost_profile(CostProfile(target={1: 1.0, 4: 1.02, 16: 1.1}, draft={1: 0.01, 16: 0.02}))
    budgets = set()
    counts = draw(engine, "specexec", sampling, tree=dict(TREE, max_budget="auto"), budgets=budgets)
    assert len(budgets) >= 3, budgets  # the trees did change
    pvalue = chi_square_pvalue(counts, exact_distribution(target, sampling), N)
    assert pvalue > ALPHA, f"auto {sampling}: chi-square p = {pvalue:.2e}"


@pytest.mark.parametrize("method", ["specinfer"])
def test_a_reduced_draft_head_keeps_the_targets_distribution(models, method):
    """The draft proposes only tokens 1 and 3; tokens 0 and 2 still come at the target's rates.
    SpecInfer: its acceptance rule divides by the draft's probabilities, zero outside the head
    (SpecExec's follows the target's draws and never reads them)."""
    import copy

    from specexec.draft_vocab import reduce_head

    target, draft = models
    engine = SpecExecEngine(target, None, reduce_head(copy.deepcopy(draft), [1, 3]))
    sampling = SETTINGS[3]
    expected = exact_distribution(target, sampling)
    assert sum(p for seq, p in expected.items() if seq[0] in (0, 2)) > 0.2  # the unproposed tokens matter
    pvalue = chi_square_pvalue(draw(engine, method, sampling), expected, N)
    assert pvalue > ALPHA, f"{method} with a reduced draft: chi-square p = {pvalue:.2e}"


def test_draft_differs_from_target(models):
    """The check has teeth only if the draft's distribution is far from the target's."""
    target, draft = models
    s = SamplingConfig(temperature=1.0)
    p, q = exact_distribution(target, s), exact_distribution(draft, s)
    tv = 0.5 * sum(abs(p[k] - q[k]) for k in p)
    assert tv > 0.3


def rejection_without_residual(tree, target_logits, q_at, sampling, generator):
    """A wrong rule: after rejecting every child, draw from p instead of the residual."""
    n = tree.size
    path, node = [0], 0
    while True:
        p = probabilities(target_logits[node], sampling).double()
        kids = [i for i in range(1, n) if int(tree.parents[i]) == node]
        q = q_at.get(node)
        accepted = None
        for child in kids:
            x = int(tree.tokens[child])
            if torch.rand((), generator=generator, dtype=torch.float64) * q[x] < p[x]:
                accepted = child
                break
        if accepted is None:
            return torch.tensor(path), int(sample(p, generator))
        path.append(accepted)
        node = accepted


def follow_children_only(tree, target_logits, sampling, generator):
    """A wrong rule: where a node has children, draw only among them (p renormalised)."""
    n = tree.size
    path, node = [0], 0
    while True:
        p = probabilities(target_logits[node], sampling).double()
        kids = [i for i in range(1, n) if int(tree.parents[i]) == node]
        if not kids:
            return torch.tensor(path), int(sample(p, generator))
        toks = torch.tensor([int(tree.tokens[k]) for k in kids])
        w = p[toks]
        if w.sum() == 0:
            return torch.tensor(path), int(sample(p, generator))
        node = kids[int(sample(w / w.sum(), generator))]
        path.append(node)


@pytest.mark.parametrize("method,patch", [("chain", ("accept_rejection", rejection_without_residual)),
                                          ("specexec", ("accept_follow", follow_children_only))])
def test_wrong_rules_are_caught(models, monkeypatch, method, patch):
    target, draft = models
    monkeypatch.setattr(methods_module, patch[0], patch[1])  # the rules the methods call
    sampling = SamplingConfig(temperature=1.0, top_p=1.0)
    counts = draw(SpecExecEngine(target, None, draft), method, sampling)
    pvalue = chi_square_pvalue(counts, exact_distribution(target, sampling), N)
    assert pvalue < ALPHA, f"the wrong rule passed (p = {pvalue:.3g}): the test has no power"
