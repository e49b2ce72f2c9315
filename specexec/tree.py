"""The token tree as flat, preallocated tensors.

Node 0 is the root: the last token of the accepted sequence. Every other node holds a
draft token, its parent's index, its depth (root = 0) and its cumulative draft
log-probability ``logp`` (root = 0). ``ancestors[i, j]`` is True when node j is node i or
one of its ancestors. Nodes are stored parents-before-children: every operation here keeps
that order, so a node's index is always larger than its parent's.

``slot[i]`` is where the draft model's cache holds node i (-1: not processed by the draft).
"""

from __future__ import annotations

import torch


def ancestor_matrix(parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ancestors (n, n) bool, depth (n,)) of a tree given by each node's parent index (-1: a root).

    Parents come before children, as in :class:`TokenTree`.
    """
    n = len(parents)
    anc = torch.zeros(n, n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.long)
    for i, p in enumerate(parents):
        anc[i, i] = True
        if p >= 0:
            anc[i] |= anc[p]
            depth[i] = depth[p] + 1
    return anc, depth


class TokenTree:
    def __init__(self, root_token: int, capacity: int, device: torch.device | str = "cpu"):
        self.capacity = capacity
        self.device = torch.device(device)
        self.tokens = torch.zeros(capacity, dtype=torch.long, device=device)
        self.parents = torch.full((capacity,), -1, dtype=torch.long, device=device)
        self.depth = torch.zeros(capacity, dtype=torch.long, device=device)
        self.logp = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.expanded = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.slot = torch.full((capacity,), -1, dtype=torch.long, device=device)
        self.ancestors = torch.zeros(capacity, capacity, dtype=torch.bool, device=device)
        self.size = 1
        self.reset(root_token)

    def reset(self, root_token: int) -> None:
        """Reuse the buffers for a new tree holding only the root."""
        n = self.size
        self.ancestors[:n, :n] = False
        self.parents[:n] = -1
        self.slot[:n] = -1
        self.expanded[:n] = False
        self.depth[:n] = 0
        self.logp[:n] = 0
        self.tokens[0] = root_token
        self.ancestors[0, 0] = True
        self.size = 1

    # ----------------------------------------------------------------- building
    def add(self, parents: torch.Tensor, tokens: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """Append children (parents must already be in the tree). Returns their indices."""
        k = tokens.numel()
        if self.size + k > self.capacity:
            self._grow(self.size + k)
        idx = torch.arange(self.size, self.size + k, device=self.device)
        self.tokens[idx] = tokens
        self.parents[idx] = parents
        self.depth[idx] = self.depth[parents] + 1
        self.logp[idx] = logp.float()
        self.ancestors[idx] = self.ancestors[parents]
        self.ancestors[idx, idx] = True
        self.size += k
        return idx

    def _grow(self, needed: int) -> None:
        cap = max(needed, 2 * self.capacity)
        for name in ("tokens", "parents", "depth", "logp", "expanded", "slot"):
            old = getattr(self, name)
            new = torch.full((cap,), -1 if name in ("parents", "slot") else 0, dtype=old.dtype, device=self.device)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)
        anc = torch.zeros(cap, cap, dtype=torch.bool, device=self.device)
        anc[: self.size, : self.size] = self.ancestors[: self.size, : self.size]
        self.ancestors = anc
        self.capacity = cap

    def keep(self, kept: torch.Tensor) -> None:
        """Keep only nodes ``kept`` (ascending indices, closed under ancestors, starting with the root)."""
        n = self.size
        k = kept.numel()
        remap = torch.full((n,), -1, dtype=torch.long, device=self.device)
        remap[kept] = torch.arange(k, device=self.device)
        parents = self.parents[kept]
        self.parents[:k] = torch.where(parents >= 0, remap[parents.clamp(min=0)], parents)
        for name in ("tokens", "depth", "logp", "expanded", "slot"):
            t = getattr(self, name)
            t[:k] = t[kept]
        self.ancestors[:k, :k] = self.ancestors[kept][:, kept]
        self.ancestors[:k, k:n] = False
        self.ancestors[k:n] = False
        self.size = k

    def trim_to_budget(self, budget: int) -> None:
        """Keep the root and the ``budget`` non-root nodes of highest ``logp``.

        Ties go to the lower index, so a parent always outranks a child of equal score and
        the kept set stays closed under ancestors. Kept nodes stay in ascending order.
        """
        if self.size - 1 <= budget:
            return
        order = torch.sort(self.logp[1 : self.size], descending=True, stable=True).indices[:budget] + 1
        kept = torch.cat([torch.zeros(1, dtype=torch.long, device=self.device), order.sort().values])
        self.keep(kept)

    # ----------------------------------------------------------------- views
    @property
    def n(self) -> int:
        return self.size

    def path_to(self, node: int) -> torch.Tensor:
        """Indices root..node (ascending = root first)."""
        return torch.nonzero(self.ancestors[node, : self.size]).flatten()

    def children_of(self, node: int) -> torch.Tensor:
        return torch.nonzero(self.parents[: self.size] == node).flatten()

    def check(self) -> None:
        """Assert the structural invariants (used by tests)."""
        n = self.size
        parents = self.parents[:n]
        assert parents[0] == -1
        assert bool((parents[1:] < torch.arange(1, n, device=self.device)).all()), "a child is stored before its parent"
        assert bool((self.depth[1:n] == self.depth[parents[1:]] + 1).all())
        expected = torch.zeros(n, n, dtype=torch.bool, device=self.device)
        for i in range(n):
            j = i
            while j >= 0:
                expected[i, j] = True
                j = int(parents[j])
        assert torch.equal(self.ancestors[:n, :n], expected), "ancestor mask is not the ancestor relation"
        pairs = parents[1:] * (int(self.tokens[:n].max()) + 1) + self.tokens[1:n]
        assert pairs.unique().numel() == n - 1, "two siblings carry the same token"
