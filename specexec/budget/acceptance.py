"""Expected accepted tokens per target pass, for every (budget, depth cap) candidate.

One verified tree answers for every smaller tree too. A tree grown with budget B and depth
cap D holds, for b <= B and d <= D, the tree of budget b and cap d: its b best-scoring nodes
of depth <= d (scores fall along every path, so that set is closed under ancestors). The
path the target accepted in the smaller tree is the part of the accepted path that lies in
it. :func:`counterfactual_counts` reads off those lengths in one pass over the tree;
:class:`AcceptanceProfile` keeps an exponentially weighted mean per candidate, so the
estimates follow the text as it changes. An estimate no tree has renewed for ``patience``
passes is dropped (the chooser then values the candidate as untried and may try it again);
each time that happens to a candidate its patience doubles, up to a limit, so candidates that
keep losing are retried ever more rarely.
"""

from __future__ import annotations

import torch

from ..tree import TokenTree


def counterfactual_counts(tree: TokenTree, path: torch.Tensor, budgets: list[int], depths: list[int]) -> torch.Tensor:
    """Tokens the pass would have emitted (accepted + the target's own) with each smaller tree.

    Returns (len(budgets), len(depths)) floats: for budget b and depth cap d, one plus the
    number of accepted nodes among the b best nodes of depth <= d.
    """
    n = tree.size
    nodes = path[1:]  # accepted nodes below the root, shallowest first
    out = torch.ones(len(budgets), len(depths))
    if nodes.numel() == 0:
        return out
    dev = tree.device
    logp, depth = tree.logp[1:n], tree.depth[1:n]
    idx = torch.arange(1, n, device=dev)
    mine = tree.logp[nodes][:, None]
    # nodes ranked before each accepted node: a higher score, or an equal score stored earlier
    before = (logp[None, :] > mine) | ((logp[None, :] == mine) & (idx[None, :] < nodes[:, None]))
    caps = torch.tensor(depths, device=dev)
    shallow = depth[:, None] <= caps[None, :]  # (n-1, len(depths))
    rank = (before.float() @ shallow.float()).cpu()  # (len(nodes), len(depths))
    node_depth = tree.depth[nodes].cpu()
    inside_cap = node_depth[:, None] <= torch.tensor(depths)[None, :]
    b = torch.tensor(budgets, dtype=torch.float32)[:, None, None]
    kept = (rank[None] < b) & inside_cap[None]  # (budgets, nodes, depths)
    return 1.0 + kept.long().cumprod(1).sum(1).float()  # only an unbroken prefix of the path is accepted


class AcceptanceProfile:
    """Running estimates of tokens per pass for each (budget, depth cap) candidate.

    ``memory``: weight kept by the old mean at each new observation (0.9: about the last
    ten trees); ``patience``: passes an estimate lives unrenewed, at first (doubling per
    expiry, up to ``max_patience``).
    """

    def __init__(self, budgets: list[int], depths: list[int], memory: float = 0.9, patience: int = 32,
                 max_patience: int = 128):
        self.budgets, self.depths = list(budgets), list(depths)
        self.memory, self.max_patience = memory, max_patience
        shape = (len(self.budgets), len(self.depths))
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.weight = torch.zeros(shape, dtype=torch.float64)
        self.seen_at = torch.zeros(shape, dtype=torch.long)
        self.patience = torch.full(shape, patience, dtype=torch.long)
        self.passes = 0  # target passes observed (trees or not)

    def tick(self) -> None:
        """A pass without a tree (an autoregressive step): only time moves on."""
        self.passes += 1

    def observe(self, tree: TokenTree, path: torch.Tensor, budget: int, depth: int) -> None:
        """Record one verified tree grown with ``budget`` and depth cap ``depth``."""
        self.observe_counts(counterfactual_counts(tree, path, self.budgets, self.depths), budget, depth)

    def observe_counts(self, counts: torch.Tensor, budget: int, depth: int) -> None:
        """Record tokens per pass ``counts`` (budgets x depths) of a tree of ``budget`` and cap ``depth``.

        Only the candidates the tree holds (budget and cap no larger than its own) are updated.
        """
        counts = torch.as_tensor(counts, dtype=torch.float64)
        covered = (torch.tensor(self.budgets)[:, None] <= budget) & (torch.tensor(self.depths)[None, :] <= depth)
        expired = covered & ~self._alive()
        lapsed = expired & (self.weight > 0)  # had an estimate, let it expire: wait longer next time
        self.patience = torch.where(lapsed, (2 * self.patience).clamp(max=self.max_patience), self.patience)
        old = torch.where(expired, 0.0, self.memory * self.weight)  # an expired mean starts afresh
        w = torch.where(covered, old + 1.0, self.weight)
        self.mean = torch.where(covered, (old * self.mean + counts) / w.clamp(min=1e-12), self.mean)
        self.weight = w
        self.seen_at[covered] = self.passes
        self.passes += 1

    def _alive(self) -> torch.Tensor:
        return (self.weight > 0) & (self.passes - self.seen_at <= self.patience)

    def estimates(self) -> list[list[float | None]]:
        """Tokens per pass of every candidate, budgets by depths; None where no tree covered it lately."""
        alive = self._alive().tolist()
        return [[m if ok else None for m, ok in zip(row, oks)] for row, oks in zip(self.mean.tolist(), alive)]
