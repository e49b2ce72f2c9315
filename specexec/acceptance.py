"""Acceptance rules: which drafted path the target keeps, plus one token of its own.

p is the target's distribution at a node (after temperature / top-p / top-k), q the
draft's. Both rules emit tokens distributed exactly as sampling from p one token at a time.

* :func:`accept_follow` (SpecExec, and greedy decoding for every method): draw one token
  from p at every node at once; starting at the root, move to the child carrying the
  drawn token while there is one. Exact for any tree with distinct siblings.
* :func:`accept_rejection` (SpecInfer, chain): multi-branch rejection sampling. At a node,
  try its children in drawing order; accept child x with probability min(1, p(x)/q(x));
  on rejection set p <- norm(max(p - q, 0)) and remove x from q; if all children are
  rejected, draw the last token from the residual p.
"""

from __future__ import annotations

import torch

from .config import SamplingConfig
from .sampling import probabilities, sample
from .tree import TokenTree


def accept_follow(
    tree: TokenTree, target_logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, int]:
    """Returns (accepted node indices root first, the extra token drawn at the last one)."""
    n = tree.size
    if sampling.greedy:
        choice = target_logits[:n].argmax(-1)
    else:
        choice = sample(probabilities(target_logits[:n], sampling), generator)
    parents = tree.parents[:n]
    match = torch.ones(n, dtype=torch.bool, device=tree.device)
    match[1:] = tree.tokens[1:n] == choice[parents[1:]]
    # A node is reached when every node on its path (itself included) matches its parent's draw.
    reached = ~(tree.ancestors[:n, :n] & ~match[None, :]).any(-1)
    path = torch.nonzero(reached).flatten()
    return path, int(choice[path[-1]])


def accept_rejection(
    tree: TokenTree,
    target_logits: torch.Tensor,
    q_at: dict[int, torch.Tensor],
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, int]:
    """Returns (accepted node indices root first, the extra token)."""
    n = tree.size
    parents = tree.parents[:n].tolist()
    children: dict[int, list[int]] = {}
    for i in range(1, n):
        children.setdefault(parents[i], []).append(i)  # ascending index = drawing order
    tokens = tree.tokens[:n].tolist()
    path = [0]
    node = 0
    while True:
        p = probabilities(target_logits[node], sampling).double()
        kids = children.get(node, [])
        if not kids:
            break
        q = q_at[node].double().clone()
        accepted = None
        for child in kids:
            x = tokens[child]
            u = torch.rand((), generator=generator, dtype=torch.float64, device=p.device)
            qx = q[x]
            if qx > 0 and u * qx < p[x]:  # u < p(x) / q(x)
                accepted = child
                break
            residual = (p - q).clamp_(min=0)
            total = residual.sum()
            if total > 0:
                p = residual / total
            q[x] = 0
            q_total = q.sum()
            if q_total > 0:
                q = q / q_total
        if accepted is None:
            return torch.tensor(path, device=tree.device), int(sample(p, generator))
        path.append(accepted)
        node = accepted
    return torch.tensor(path, device=tree.device), int(sample(p, generator))
