"""Token tree invariants on hand-built and grown trees."""

import math

import pytest
import torch

from specexec.config import GenerationConfig
from specexec.growth import DraftExpander, grow_specexec
from specexec.runner import ModelRunner
from specexec.tree import TokenTree

from conftest import tiny_model


def hand_tree():
    t = TokenTree(root_token=7, capacity=4)  # small capacity: forces growth
    a = t.add(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([-0.1, -0.5]))
    b = t.add(torch.tensor([int(a[0]), int(a[0]), int(a[1])]), torch.tensor([3, 4, 3]),
              torch.tensor([-0.3, -0.9, -0.6]))
    t.add(torch.tensor([int(b[0])]), torch.tensor([5]), torch.tensor([-0.4]))
    return t


def test_hand_built_tree_invariants():
    t = hand_tree()
    t.check()
    assert t.size == 7
    assert t.tokens[:7].tolist() == [7, 1, 2, 3, 4, 3, 5]
    assert t.parents[:7].tolist() == [-1, 0, 0, 1, 1, 2, 3]
    assert t.depth[:7].tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert t.path_to(6).tolist() == [0, 1, 3, 6]
    assert t.children_of(1).tolist() == [3, 4]


def test_trim_keeps_best_closed_under_ancestors_in_order():
    t = hand_tree()
    t.trim_to_budget(3)  # best three: -0.1 (1), -0.3 (3), -0.4 (6)
    t.check()
    assert t.size == 4
    assert t.tokens[:4].tolist() == [7, 1, 3, 5]
    assert t.parents[:4].tolist() == [-1, 0, 1, 2]
    assert t.logp[1:4].tolist() == pytest.approx([-0.1, -0.3, -0.4])


def test_trim_ties_keep_parent_before_child():
    t = TokenTree(0, 8)
    a = t.add(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([-1.0, -1.0]))
    t.add(torch.tensor([int(a[1])]), torch.tensor([3]), torch.tensor([-1.0]))  # child ties with parent
    t.trim_to_budget(2)
    t.check()
    assert t.tokens[: t.size].tolist() == [0, 1, 2]


def test_reset_clears_previous_tree():
    t = hand_tree()
    t.reset(9)
    assert t.size == 1 and int(t.tokens[0]) == 9
    t.add(torch.tensor([0]), torch.tensor([1]), torch.tensor([-0.2]))
    t.check()


def test_check_catches_a_wrong_mask():
    t = hand_tree()
    t.ancestors[6, 1] = False
    with pytest.raises(AssertionError):
        t.check()


@torch.no_grad()
def grow(budget, beams=4, width=4, depth=6, min_log_prob=None, decay=1.0, seed=0):
    model = tiny_model("llama", seed=seed, vocab=32, initializer_range=0.3)
    runner = ModelRunner(model)
    prompt = torch.tensor([1, 5, 9, 3])
    runner.forward_chain(prompt, 0)
    runner.commit(torch.arange(4))
    tree = TokenTree(int(prompt[-1]), 2 * budget + 2)
    tree.slot[0] = 3
    tree.expanded[0] = True
    root_logits = runner.model(prompt[None]).logits[0, -1]
    cfg = GenerationConfig(max_budget=budget, max_n_beams=beams, max_branch_width=width, max_beam_len=depth,
                           min_log_prob=min_log_prob, decay=decay)
    expander = DraftExpander(runner, tree, root_pos=3)
    grow_specexec(expander, root_logits, cfg, depth)
    return tree, expander, model, prompt


@pytest.mark.parametrize("budget", [1, 5, 16, 64])
def test_grown_tree_invariants_and_budget(budget):
    tree, expander, _, _ = grow(budget)
    tree.check()
    assert tree.size - 1 <= budget
    assert int(tree.depth[: tree.size].max()) <= 6
    assert expander.passes <= 5  # the root pass is made outside, so depth 6 needs at most 5 more


@torch.no_grad()
def test_grown_tree_scores_are_draft_log_probs_and_best_first():
    """Every node's score is the draft's cumulative log-prob along its path (checked by a
    plain sequential forward), and no node left out of the tree beats the worst kept one
    among the children of expanded nodes."""
    tree, _, model, prompt = grow(12)
    n = tree.size
    for i in range(1, n):
        path = tree.path_to(i).tolist()
        toks = prompt.tolist() + tree.tokens[path[1:]].tolist()
        logq = model(torch.tensor([toks])).logits[0].double().log_softmax(-1)
        expect = sum(float(logq[len(prompt) - 1 + d, toks[len(prompt) + d]]) for d in range(len(path) - 1))
        assert float(tree.logp[i]) == pytest.approx(expect, abs=1e-4)
    worst = float(tree.logp[1:n].min())
    for i in range(n):
        if not bool(tree.expanded[i]):
            continue
        path = tree.path_to(i).tolist()
        toks = prompt.tolist() + tree.tokens[path[1:]].tolist()
        logq = model(torch.tensor([toks])).logits[0, -1].double().log_softmax(-1)
        kids = set(tree.tokens[tree.children_of(i)].tolist())
        best_missing = max((float(tree.logp[i]) + float(logq[v]) for v in torch.topk(logq, 4).indices.tolist()
                            if v not in kids), default=-math.inf)
        assert best_missing <= worst + 1e-6


def test_min_log_prob_is_honoured():
    tree, _, _, _ = grow(64, min_log_prob=-3.0)
    tree.check()
    assert float(tree.logp[1: tree.size].min()) >= -3.0
    unrestricted, _, _, _ = grow(64)
    assert float(unrestricted.logp[1: unrestricted.size].min()) < -3.0  # the option changed something


def test_decay_lowers_deeper_scores():
    plain, _, _, _ = grow(16)
    decayed, _, _, _ = grow(16, decay=0.5)
    decayed.check()
    # with a decay every score drops by depth * log(2): compare the root's first child
    assert float(decayed.logp[1]) == pytest.approx(float(plain.logp[1]) + math.log(0.5), abs=1e-5)
