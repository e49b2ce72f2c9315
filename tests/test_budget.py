"""Budgets chosen for the hardware: cost profiles, acceptance estimates, the chooser, ``auto``."""

import json
import math
import random

import pytest
import torch

from specexec import SpecExecEngine
from specexec.budget import AUTOREGRESSIVE, BudgetChooser, CostProfile, TreePlan, cache, load_or_measure
from specexec.budget import chooser as chooser_module
from specexec.budget.acceptance import counterfactual_counts
from specexec.errors import ConfigError
from specexec.runner import ModelRunner
from specexec.tree import TokenTree

from conftest import TINY_FAMILIES, assert_greedy_equal, greedy_reference, tiny_model


# ---------------------------------------------------------------- cost profile
def test_cost_profile_interpolates_and_extrapolates():
    p = CostProfile(target={1: 1.0, 4: 1.6, 8: 2.0}, draft={1: 0.1, 2: 0.2})
    assert p.target_seconds(1) == 1.0
    assert p.target_seconds(2) == pytest.approx(1.2)
    assert p.target_seconds(6) == pytest.approx(1.8)
    assert p.target_seconds(16) == pytest.approx(2.8)  # the last segment's slope
    assert p.draft_seconds(8) == pytest.approx(0.8)
    assert CostProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for bad in ({}, {1: -1.0}, {0: 1.0}, {1: float("nan")}):
        with pytest.raises(ValueError):
            CostProfile(target=bad, draft={})


def test_measured_profile_times_every_size_until_a_pass_cannot_pay():
    torch.manual_seed(0)
    runner = ModelRunner(tiny_model("llama", dtype=torch.float32))
    from specexec.budget.cost import time_passes

    times = time_passes(runner, [1, 2, 4, 8], seconds=30)
    assert list(times) == [1, 2, 4, 8] and all(t > 0 for t in times.values())
    assert runner.cache_len == 0 and runner.committed == 0  # nothing left in the cache
    cut = time_passes(runner, [1, 2, 4, 8], stop_ratio=0.0, seconds=30)
    assert list(cut) == [1, 2]  # the second size already costs more than 0 x the first


# ---------------------------------------------------------------- counterfactual acceptance
def random_tree(rng: random.Random, size: int, vocab: int = 6):
    """A tree with scores falling along paths, and a target choice at every node."""
    tree = TokenTree(0, 2 * size)
    while tree.size < size:
        parent = rng.randrange(tree.size)
        used = set(tree.tokens[tree.children_of(parent)].tolist())
        free = [t for t in range(vocab) if t not in used]
        if not free or int(tree.depth[parent]) >= 6:
            continue
        logp = float(tree.logp[parent]) - rng.random() * 2
        tree.add(torch.tensor([parent]), torch.tensor([rng.choice(free)]), torch.tensor([logp]))
    choice = torch.tensor([rng.randrange(vocab) for _ in range(tree.size)])
    # make the accepted path long enough to matter: follow a random branch
    node = 0
    while True:
        kids = tree.children_of(node)
        if kids.numel() == 0 or rng.random() < 0.15:
            break
        child = int(kids[rng.randrange(kids.numel())])
        choice[node] = tree.tokens[child]
        node = child
    return tree, choice


def accepted_length(tree: TokenTree, choice: torch.Tensor) -> int:
    node, n = 0, 0
    while True:
        kids = [int(k) for k in tree.children_of(node) if int(tree.tokens[k]) == int(choice[node])]
        if not kids:
            return n
        node, n = kids[0], n + 1


def subtree(tree: TokenTree, choice: torch.Tensor, budget: int, depth: int):
    """The tree of ``budget`` best nodes of depth <= ``depth``, built by hand, with the choices it keeps."""
    n = tree.size
    logp = tree.logp[1:n].clone()
    logp[tree.depth[1:n] > depth] = -float("inf")
    order = torch.sort(logp, descending=True, stable=True).indices[:budget] + 1
    order = order[torch.isfinite(tree.logp[order]) & (tree.depth[order] <= depth)]
    kept = torch.cat([torch.zeros(1, dtype=torch.long), order.sort().values])
    small = TokenTree(0, n)
    small.tokens[:n], small.parents[:n], small.depth[:n] = tree.tokens[:n], tree.parents[:n], tree.depth[:n]
    small.logp[:n], small.ancestors[:n, :n], small.size = tree.logp[:n], tree.ancestors[:n, :n], n
    small.keep(kept)
    return small, choice[kept]


@pytest.mark.parametrize("seed", range(12))
def test_counterfactual_counts_equal_verifying_each_smaller_tree(seed):
    rng = random.Random(seed)
    tree, choice = random_tree(rng, rng.randrange(2, 60))
    path = [0]
    while True:
        kids = [int(k) for k in tree.children_of(path[-1]) if int(tree.tokens[k]) == int(choice[path[-1]])]
        if not kids:
            break
        path.append(kids[0])
    budgets, depths = [1, 2, 3, 5, 8, 16, 64], [1, 2, 3, 4, 6]
    counts = counterfactual_counts(tree, torch.tensor(path), budgets, depths)
    for i, b in enumerate(budgets):
        for j, d in enumerate(depths):
            small, small_choice = subtree(tree, choice, b, d)
            small.check()
            assert counts[i, j] == 1 + accepted_length(small, small_choice), (b, d)
    assert counts[-1, -1] == len(path)  # the whole tree: the path the target accepted


# ---------------------------------------------------------------- the chooser, on synthetic profiles
FLAT = CostProfile(target={1: 1.0, 16: 1.05, 64: 1.2, 256: 1.8, 1024: 5.0}, draft={1: 0.01, 16: 0.012, 64: 0.02})


def run_chooser(chooser: BudgetChooser, expected, passes: int, rng: random.Random, truth: BudgetChooser | None = None):
    """Drive the chooser ``passes`` times; the true mean tokens per pass of (b, d) is ``expected(b, d)``;
    with ``truth``, each iteration takes the seconds that chooser's profile gives (+-20%)."""
    chosen = []
    for _ in range(passes):
        plan = chooser.choose()
        chosen.append(plan)
        if plan.budget == AUTOREGRESSIVE:
            chooser.observe(None, None, 0)
        else:
            noise = rng.uniform(0.7, 1.3)  # one pass accepts more or less than the mean, all candidates alike
            counts = torch.tensor([[1 + (expected(b, d) - 1) * noise for d in chooser.depths] for b in chooser.budgets])
            chooser.observe_counts(counts, plan.depth, emitted=2)
        if truth is not None:
            chooser.observe_seconds(truth.seconds(plan) * rng.uniform(0.8, 1.2))
    return chosen


def efficiency(chooser: BudgetChooser, expected, plans) -> float:
    """Tokens per second of ``plans`` (true means) over the best candidate's."""
    tokens = sum(1.0 if p.budget == AUTOREGRESSIVE else expected(p.budget, p.depth) for p in plans)
    seconds = sum(chooser.seconds(p) for p in plans)
    best = best_plan(chooser, expected)
    best_rate = (1.0 if best.budget == AUTOREGRESSIVE else expected(best.budget, best.depth)) / chooser.seconds(best)
    return tokens / seconds / best_rate


def best_plan(chooser: BudgetChooser, expected) -> TreePlan:
    rows = [(TreePlan(0, 0), 1.0 / chooser.seconds(TreePlan(0, 0)))]
    rows += [(TreePlan(b, d), expected(b, d) / chooser.seconds(TreePlan(b, d)))
             for b in chooser.budgets for d in chooser.depths if d <= b]
    return max(rows, key=lambda r: r[1])[0]


def saturating(b, d):
    """More tokens with larger, deeper trees, with diminishing returns."""
    return 1 + min(d, 0.9 * (1 + torch.log2(torch.tensor(float(b))).item()))


def test_the_chooser_finds_the_known_optimum():
    chooser = BudgetChooser(FLAT, max_depth=16, max_n_beams=16)
    optimum = best_plan(chooser, saturating)
    assert optimum.budget > 16  # a real choice: neither the smallest nor autoregressive
    chosen = run_chooser(chooser, saturating, 300, random.Random(0))
    late = chosen[-100:]
    assert late.count(optimum) >= 40, (optimum, {p: late.count(p) for p in set(late)})  # near-ties share the rest
    assert efficiency(chooser, saturating, late) >= 0.95, {p: late.count(p) for p in set(late)}
    assert efficiency(chooser, saturating, chosen) >= 0.9  # first passes included


def test_the_chooser_decodes_autoregressively_when_every_tree_loses():
    # the draft is never right: after a few tries, trees stop
    chooser = BudgetChooser(FLAT, max_depth=16, max_n_beams=16)
    chosen = run_chooser(chooser, lambda b, d: 1.0, 300, random.Random(1))
    assert sum(p.budget != AUTOREGRESSIVE for p in chosen) <= 30
    assert sum(p.budget != AUTOREGRESSIVE for p in chosen[-100:]) <= 5
    assert efficiency(chooser, lambda b, d: 1.0, chosen) >= 0.95
    # a pass over two tokens costs as much as two passes over one: no tree is even tried
    costly = CostProfile(target={1: 1.0, 2: 2.0, 1024: 1024.0}, draft={1: 0.5, 64: 32.0})
    chooser = BudgetChooser(costly, max_depth=16, max_n_beams=16)
    assert all(p.budget == AUTOREGRESSIVE for p in run_chooser(chooser, saturating, 50, random.Random(2)))


# a small model in RAM on a CPU: a tree pass costs several one-token passes
CPU = CostProfile(target={1: 0.07, 2: 0.12, 8: 0.14, 16: 0.16, 32: 0.2, 64: 0.3, 128: 0.4, 1024: 2.7},
                  draft={1: 0.0085, 16: 0.015, 64: 0.035})


@pytest.mark.parametrize("share", [chooser_module.PROBE_SHARE, float("inf")])
def test_probes_take_a_bounded_share_of_the_time(monkeypatch, share):
    """Where trees lose (here a tree of any size yields 1.6 tokens a pass), trying them again as
    their estimates expire (here after 2-4 passes) costs at most about 5% of the time, so
    auto keeps 95% of the speed of decoding without a tree; without that bound, more."""
    monkeypatch.setattr(chooser_module, "PROBE_SHARE", share)
    chooser = BudgetChooser(CPU, max_depth=16, max_n_beams=16)
    chooser.acceptance.patience[:] = 2
    chooser.acceptance.max_patience = 4
    chosen = run_chooser(chooser, lambda b, d: 1.6, 1000, random.Random(4))
    tree_seconds = sum(chooser.seconds(p) for p in chosen if p.budget != AUTOREGRESSIVE)
    share_of_time = tree_seconds / sum(chooser.seconds(p) for p in chosen)
    if share <= 1:
        assert share_of_time <= 0.06, share_of_time
        assert efficiency(chooser, lambda b, d: 1.6, chosen) >= 0.95
    else:
        assert share_of_time > 0.1, share_of_time
        assert efficiency(chooser, lambda b, d: 1.6, chosen) < 0.95


def test_the_chooser_follows_acceptance_that_changes_mid_run():
    chooser = BudgetChooser(FLAT, max_depth=16, max_n_beams=16)
    rng = random.Random(3)
    first = run_chooser(chooser, saturating, 150, rng)
    assert sum(p.budget != AUTOREGRESSIVE for p in first[-50:]) >= 45
    second = run_chooser(chooser, lambda b, d: 1.0, 150, rng)  # the text turns unpredictable
    assert sum(p.budget == AUTOREGRESSIVE for p in second[-50:]) >= 45
    assert efficiency(chooser, lambda b, d: 1.0, second[-50:]) >= 0.95
    third = run_chooser(chooser, saturating, 200, rng)  # and predictable again
    assert efficiency(chooser, saturating, third[-50:]) >= 0.95


# large trees cost far more than FLAT says (as a streamed pass does with a long prefix and drafting between)
STEEP = CostProfile(target={1: 1.0, 16: 1.3, 64: 2.2, 256: 6.0, 1024: 22.0}, draft=FLAT.draft)


def test_the_chooser_corrects_a_profile_that_prices_large_trees_too_low():
    truth = BudgetChooser(STEEP, max_depth=16, max_n_beams=16)
    optimum, believed = best_plan(truth, saturating), best_plan(BudgetChooser(FLAT, max_depth=16, max_n_beams=16),
                                                                saturating)
    assert believed.budget > optimum.budget  # the profile alone points at too large a tree
    timed = BudgetChooser(FLAT, max_depth=16, max_n_beams=16)
    chosen = run_chooser(timed, saturating, 300, random.Random(0), truth)
    late = chosen[-100:]
    assert efficiency(truth, saturating, late) >= 0.95, {p: late.count(p) for p in set(late)}
    assert efficiency(truth, saturating, chosen) >= 0.9
    assert timed.time_ratio(optimum.budget) == pytest.approx(truth.seconds(optimum) / timed.profile_seconds(optimum),
                                                             rel=0.15)
    # the same run priced by the profile alone keeps choosing too large a tree
    untimed = BudgetChooser(FLAT, max_depth=16, max_n_beams=16, timed=False)
    late = run_chooser(untimed, saturating, 300, random.Random(0), truth)[-100:]
    assert efficiency(truth, saturating, late) < 0.85
    assert not untimed.log_ratio


def test_measured_seconds_price_the_budgets_not_run_like_the_nearest_run():
    chooser = BudgetChooser(FLAT, max_depth=8, max_n_beams=4)
    assert chooser.time_ratio(16) == 1.0  # nothing measured: the profile as it is
    plan = TreePlan(16, 4)
    chooser.last = plan
    counts = torch.ones(len(chooser.budgets), len(chooser.depths))
    chooser.observe_counts(counts, 4, emitted=2)
    chooser.observe_seconds(2 * chooser.profile_seconds(plan))
    chooser.observe_seconds(5.0)  # nothing observed since: ignored
    assert chooser.time_ratio(16) == pytest.approx(2.0)
    assert chooser.seconds(plan) == pytest.approx(2 * chooser.profile_seconds(plan))
    assert chooser.time_ratio(64) == pytest.approx(2.0) and chooser.time_ratio(0) == pytest.approx(2.0)
    chooser.last = TreePlan(AUTOREGRESSIVE, 0)
    chooser.observe(None, None, 0)
    chooser.observe_seconds(0.5 * FLAT.target_seconds(1))
    assert chooser.time_ratio(0) == pytest.approx(0.5) and chooser.time_ratio(8) == pytest.approx(0.5)
    assert chooser.time_ratio(32) == pytest.approx(2.0)
    chooser.last = plan  # the mean (in logarithms) weighs the past 0.9 per iteration
    chooser.observe_counts(counts, 4, emitted=2)
    chooser.observe_seconds(4 * chooser.profile_seconds(plan))
    assert chooser.time_ratio(16) == pytest.approx(2.0 ** (2.9 / 1.9))  # (0.9 * log 2 + log 4) / 1.9
    chooser.observe_counts(counts, 4, emitted=2)
    chooser.observe_seconds(1e6)  # a stall counts as at most 8x
    past = 0.9 * 1.9
    assert chooser.time_ratio(16) == pytest.approx(math.exp((past * 2.9 / 1.9 * math.log(2.0) + math.log(8.0)) / (past + 1)))


def test_expected_seconds_follow_the_profile():
    chooser = BudgetChooser(FLAT, max_depth=8, max_n_beams=4)
    assert chooser.seconds(TreePlan(0, 0)) == 1.0
    # catch-up pass over 2 tokens, 7 growth passes over 4 nodes, a target pass over 33 tokens
    want = FLAT.draft_seconds(2) + 7 * FLAT.draft_seconds(4) + FLAT.target_seconds(33)
    assert chooser.seconds(TreePlan(32, 8)) == pytest.approx(want)
    assert max(chooser.depths) == 8 and max(chooser.budgets) == 1024


# ---------------------------------------------------------------- the profile cache
@pytest.fixture
def pair(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path))
    torch.manual_seed(0)
    target, draft = tiny_model("llama", dtype=torch.float32), tiny_model("llama", seed=1, dtype=torch.float32)
    return ModelRunner(target), ModelRunner(draft), tmp_path


def test_profile_cache_is_reused_and_keyed_by_setting(pair):
    target, draft, root = pair
    first, path, measured = load_or_measure(target, draft, cache_root=root, seconds=0.5)
    assert measured and path.exists() and path.parent == root / "profiles"
    again, path2, measured2 = load_or_measure(target, draft, cache_root=root, seconds=0.5)
    assert not measured2 and path2 == path and again == first
    # another dtype, another draft, another offload mode: other keys, other files
    key = cache.profile_key(target.model, draft.model)
    assert cache.profile_path(root, {**key, "dtype": "torch.bfloat16"}) != path
    assert cache.profile_path(root, {**key, "offload": "DiskTransport:2:30"}) != path
    other = ModelRunner(tiny_model("llama", dtype=torch.float32, layers=3))
    _, path3, measured3 = load_or_measure(target, other, cache_root=root, seconds=0.5)
    assert measured3 and path3 != path
    # the same draft quantized in place (its config unchanged): another key too
    from specexec.quantize import quantize_model

    quantized = quantize_model(tiny_model("llama", seed=1, dtype=torch.float32), "int8")
    assert quantized.config.to_json_string() == draft.model.config.to_json_string()
    assert cache.profile_path(root, cache.profile_key(target.model, quantized)) != path


@pytest.mark.parametrize("damage", ["not json", json.dumps({"key": "x", "profile": {}}),
                                    json.dumps({"profile": {"target": {"1": -1}}})])
def test_a_corrupt_profile_is_measured_again_with_a_warning(pair, damage):
    target, draft, root = pair
    _, path, _ = load_or_measure(target, draft, cache_root=root, seconds=0.5)
    path.write_text(damage)
    with pytest.warns(UserWarning, match="cannot be used"):
        profile, path2, measured = load_or_measure(target, draft, cache_root=root, seconds=0.5)
    assert measured and path2 == path
    assert json.loads(path.read_text())["profile"] == profile.to_dict()


# ---------------------------------------------------------------- "auto" in the engine
def test_auto_is_validated():
    from specexec.config import GenerationConfig

    assert GenerationConfig(max_budget="auto").auto_budget
    with pytest.raises(ConfigError, match="or 'auto'"):
        GenerationConfig(max_budget="automatic")


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_auto_is_greedy_exact_and_changes_its_trees(family):
    torch.manual_seed(0)
    target = tiny_model(family, seed=0)
    draft = tiny_model(family, seed=0, layers=1)  # agrees often, not always
    engine = SpecExecEngine(target, None, draft)
    engine.use_cost_profile(FLAT)  # trees are cheap here: auto must draft, and must move between budgets
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]
    res = engine.generate(prompt, max_new_tokens=40, max_budget="auto", max_beam_len=6)
    want = greedy_reference(target, prompt, 40)
    assert_greedy_equal(target, prompt, res.token_ids, want, family)
    assert len(res.stats.budgets) == res.stats.target_passes
    assert len(set(res.stats.budgets)) >= 2, res.stats.budgets


def test_auto_measures_the_profile_once_per_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXEC_CACHE", str(tmp_path))
    target, draft = tiny_model("llama", dtype=torch.float32), tiny_model("llama", seed=1, dtype=torch.float32)
    engine = SpecExecEngine(target, None, draft)
    r1 = engine.generate([1, 2, 3], max_new_tokens=8, max_budget="auto")
    profile = engine.cost_profile()
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1
    r2 = SpecExecEngine(target, None, draft).generate([1, 2, 3], max_new_tokens=8, max_budget="auto")
    assert r1.token_ids == r2.token_ids == greedy_reference(target, [1, 2, 3], 8)
    assert engine.cost_profile() is profile


def test_auto_keeps_what_it_learnt_across_generations():
    """The next generation with the same settings continues the chooser's acceptance estimates;
    other settings, or another cost profile, start afresh; every generation stays exact."""
    target = tiny_model("llama", seed=0)
    draft = tiny_model("llama", seed=0, layers=1)
    engine = SpecExecEngine(target, None, draft)
    engine.use_cost_profile(FLAT)
    cfg = engine._config(None, dict(max_budget="auto", max_beam_len=6))
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8]]
    passes = 0
    for prompt in prompts:
        res = engine.generate(prompt, max_new_tokens=24, max_budget="auto", max_beam_len=6)
        assert_greedy_equal(target, prompt, res.token_ids, greedy_reference(target, prompt, 24), "auto, carried over")
        passes += res.stats.target_passes
        chooser = engine._planner(cfg)
        assert chooser.acceptance.passes == passes  # one chooser saw both generations' passes
        assert chooser.acceptance.weight.sum() > 0
        assert chooser.log_ratio  # and priced its trees by their measured times
    other = engine._planner(engine._config(None, dict(max_budget="auto", max_beam_len=4)))
    assert other is not chooser and other.acceptance.passes == 0
    sampled = engine._config(None, dict(max_budget="auto", max_beam_len=6, temperature=0.7, seed=None))
    assert engine._planner(sampled) is not chooser and engine._planner(sampled) is engine._planner(sampled)
    seeded = engine._config(None, dict(max_budget="auto", max_beam_len=6, temperature=0.7, seed=5))
    assert engine._planner(seeded) is not engine._planner(seeded)  # seeded sampling starts afresh: it repeats
    assert not engine._planner(seeded).timed  # and keeps to the profile: timings differ between runs
    a = engine.generate(prompts[0], max_new_tokens=16, max_budget="auto", max_beam_len=6, temperature=0.7, seed=5)
    b = engine.generate(prompts[0], max_new_tokens=16, max_budget="auto", max_beam_len=6, temperature=0.7, seed=5)
    assert a.token_ids == b.token_ids and a.stats.budgets == b.stats.budgets
    assert engine._planner(cfg) is chooser
    engine.use_cost_profile(CostProfile.from_dict(FLAT.to_dict()))
    assert engine._planner(cfg) is not chooser
    for i in range(SpecExecEngine.MAX_CHOOSERS + 2):
        engine._planner(engine._config(None, dict(max_budget="auto", max_beam_len=6, max_n_beams=i + 1)))
    assert len(engine._choosers) == SpecExecEngine.MAX_CHOOSERS
