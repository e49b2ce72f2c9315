"""The decoding methods: how large a tree each can grow, how it grows it, how it accepts from it.

The decode loop (:mod:`specexec.engine`) asks the method of a generation for these three things and
nothing else; a new method is a class here and a name in :data:`specexec.config.METHODS`.
"""

from __future__ import annotations

import torch

from .acceptance import accept_follow, accept_rejection
from .budget import MAX_AUTO_BUDGET
from .config import METHODS, GenerationConfig, SamplingConfig
from .growth import DraftExpander, grow_chains, grow_specexec
from .tree import TokenTree


class Method:
    """A decoding method. ``grow`` returns the draft's distributions at the tree's nodes where the
    acceptance rule needs them (rejection sampling), or None."""

    name = ""
    uses_draft = True
    chooses_budgets = False  # the tree's size comes from the budget chooser (SpecExec)

    def capacity(self, cfg: GenerationConfig, vocab: int) -> int:
        raise NotImplementedError

    def grow(self, expander: DraftExpander, root_logits: torch.Tensor, cfg: GenerationConfig, max_depth: int,
             budget: int, draft_sampling: SamplingConfig, generator: torch.Generator):
        raise NotImplementedError

    def accept(self, tree: TokenTree, logits: torch.Tensor, q_at, sampling: SamplingConfig,
               generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """The accepted path (node indices from the root) and the target's own next token."""
        return accept_follow(tree, logits, sampling, generator)


class Autoregressive(Method):
    """No draft: the tree is its root alone, and the target's pass gives one token."""

    name = "autoregressive"
    uses_draft = False

    def capacity(self, cfg, vocab):
        return 1

    def grow(self, *args):
        return None


class SpecExec(Method):
    """Best-first growth under a token budget; the target's own token is followed down the tree."""

    name = "specexec"
    chooses_budgets = True

    def capacity(self, cfg, vocab):
        budget = MAX_AUTO_BUDGET if cfg.auto_budget else cfg.max_budget
        per_pass = min(cfg.max_n_beams, budget) * min(cfg.max_branch_width, vocab)
        reach = min(budget, min(cfg.max_beam_len, cfg.max_new_tokens) * per_pass)
        return 2 * reach + 2  # kept nodes plus one pass's admitted candidates before the trim

    def grow(self, expander, root_logits, cfg, max_depth, budget, draft_sampling, generator):
        grow_specexec(expander, root_logits, cfg, max_depth, budget=budget)
        return None


class Chains(Method):
    """Sampled chains from the draft (SpecInfer: ``max_n_beams`` of them; chain: one), accepted by
    rejection sampling, or by following the target's token when greedy."""

    def __init__(self, name: str):
        self.name = name

    def chains(self, cfg: GenerationConfig) -> int:
        return 1 if self.name == "chain" else cfg.max_n_beams

    def capacity(self, cfg, vocab):
        return min(self.chains(cfg), vocab) * min(cfg.max_beam_len, cfg.max_new_tokens) + 1

    def grow(self, expander, root_logits, cfg, max_depth, budget, draft_sampling, generator):
        return grow_chains(expander, root_logits, self.chains(cfg), max_depth, draft_sampling, generator)

    def accept(self, tree, logits, q_at, sampling, generator):
        if q_at is None or sampling.greedy:
            return accept_follow(tree, logits, sampling, generator)
        return accept_rejection(tree, logits, q_at, sampling, generator)


_BY_NAME = {m.name: m for m in (SpecExec(), Chains("specinfer"), Chains("chain"), Autoregressive())}
assert set(_BY_NAME) == set(METHODS)


def method_for(name: str) -> Method:
    return _BY_NAME[name]
