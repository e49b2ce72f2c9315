"""Growing draft trees.

Notation (as in the SpecExec paper): q is the draft model's distribution, p the target's.
Scores are cumulative draft log-probabilities along a path.

* :func:`grow_specexec`: batched best-first search under a token budget (SpecExec).
* :func:`grow_chains`: independent sampled chains with distinct first tokens (SpecInfer;
  one chain = classic speculative decoding). Records q at every expanded node for the
  rejection-sampling acceptance rule.
"""

from __future__ import annotations

import math

import torch

from .config import MIN_TEMPERATURE, GenerationConfig, SamplingConfig
from .runner import ModelRunner
from .sampling import probabilities, sample, sample_distinct
from .tree import TokenTree


class DraftExpander:
    """Runs the draft model over tree nodes on top of its committed cache.

    The root (node 0) is the last committed entry of the draft cache, at position
    ``root_pos``; expanded nodes get provisional cache slots recorded in ``tree.slot``.
    """

    def __init__(self, runner: ModelRunner, tree: TokenTree, root_pos: int):
        self.runner = runner
        self.tree = tree
        self.root_pos = root_pos
        self.passes = 0

    def expand(self, nodes: torch.Tensor) -> torch.Tensor:
        """Draft logits (k, V) at ``nodes``; marks them expanded."""
        tree, runner = self.tree, self.runner
        n, k = tree.size, nodes.numel()
        base = runner.committed
        provisional = runner.cache_len - base
        in_cache = tree.slot[:n] >= base
        dev = tree.device
        vis_tree = torch.zeros(k, provisional, dtype=torch.bool, device=dev)
        if provisional:
            vis_tree[:, tree.slot[:n][in_cache] - base] = tree.ancestors[nodes][:, :n][:, in_cache]
        visible = torch.cat(
            [torch.ones(k, base, dtype=torch.bool, device=dev), vis_tree, torch.eye(k, dtype=torch.bool, device=dev)],
            dim=1,
        )
        logits = runner.forward(tree.tokens[nodes], self.root_pos + tree.depth[nodes], visible)
        tree.slot[nodes] = torch.arange(runner.cache_len - k, runner.cache_len, device=dev)
        tree.expanded[nodes] = True
        self.passes += 1
        return logits


def grow_specexec(
    expander: DraftExpander,
    root_logits: torch.Tensor,
    cfg: GenerationConfig,
    max_depth: int,
    vocab_limit: int | None = None,
    budget: int | None = None,
) -> None:
    """Best-first growth of ``expander.tree`` from the draft's logits at the root.

    Each step expands up to ``max_n_beams`` unexpanded nodes of highest score, proposes
    each one's ``max_branch_width`` most likely children, and keeps the children whose
    score is among the ``max_budget`` best of the tree plus candidates (and >= min_log_prob).
    At most ``max_depth`` draft passes (the root's included); the tree is trimmed to the budget
    (``budget``, or the configuration's).
    """
    tree = expander.tree
    budget = cfg.max_budget if budget is None else budget
    temperature = cfg.draft_temperature if cfg.draft_temperature is not None and cfg.draft_temperature >= MIN_TEMPERATURE else 1.0
    log_decay = math.log(cfg.decay)
    floor = -math.inf if cfg.min_log_prob is None else cfg.min_log_prob
    nodes = torch.zeros(1, dtype=torch.long, device=tree.device)
    logits = root_logits[None]
    for step in range(max_depth):
        if vocab_limit is not None:
            logits = logits[..., :vocab_limit]
        logq = (logits.float() / temperature).log_softmax(-1)
        width = min(cfg.max_branch_width, logq.shape[-1])
        child_lp, child_tok = torch.topk(logq, width, dim=-1)  # (k, width)
        scores = (tree.logp[nodes][:, None] + child_lp + log_decay).flatten()
        parents = nodes[:, None].expand(-1, width).flatten()
        tokens = child_tok.flatten()
        ok = torch.isfinite(scores) & (scores >= floor)
        existing = tree.logp[1 : tree.size]
        pool = torch.cat([existing, scores[ok]])
        if pool.numel() > budget:
            threshold = torch.topk(pool, budget).values[-1]
            ok &= scores >= threshold
        if not bool(ok.any()):
            break
        tree.add(parents[ok], tokens[ok], scores[ok])
        if tree.size - 1 > budget:
            tree.trim_to_budget(budget)
        if step == max_depth - 1:
            break
        # Next nodes to expand: unexpanded, best score, able to beat the worst kept node.
        n = tree.size
        score = torch.where(tree.expanded[:n], -math.inf, tree.logp[:n])
        score[0] = -math.inf
        if n - 1 >= budget:
            worst = tree.logp[1:n].min()
            score = torch.where(score > worst, score, -math.inf)
        top = torch.topk(score, min(cfg.max_n_beams, n))
        nodes = top.indices[torch.isfinite(top.values)]
        if nodes.numel() == 0:
            break
        nodes = nodes.sort().values
        logits = expander.expand(nodes)
    tree.trim_to_budget(budget)


def grow_chains(
    expander: DraftExpander,
    root_logits: torch.Tensor,
    n_chains: int,
    length: int,
    draft_sampling: SamplingConfig,
    generator: torch.Generator | None,
    vocab_limit: int | None = None,
) -> dict[int, torch.Tensor]:
    """Sample ``n_chains`` chains of up to ``length`` tokens from the draft.

    First tokens are drawn without replacement (distinct siblings at the root); each chain
    then continues with independent draws. Returns {node index: q at that node} for every
    node whose children were drawn (q is the distribution they were drawn from).
    """
    tree = expander.tree
    q_at: dict[int, torch.Tensor] = {}

    def dist(logits):
        if vocab_limit is not None:
            logits = logits[..., :vocab_limit]
        return probabilities(logits, draft_sampling)

    def logq(logits):  # the draft's own log-probabilities, for the scores reported in stats
        if vocab_limit is not None:
            logits = logits[..., :vocab_limit]
        return logits.float().log_softmax(-1)

    q_root = dist(root_logits)
    q_at[0] = q_root
    if draft_sampling.greedy:
        first = torch.topk(logq(root_logits), min(n_chains, q_root.shape[-1])).indices
    else:
        first, valid = sample_distinct(q_root, n_chains, generator)
        first = first[valid]
    leaves = tree.add(torch.zeros_like(first), first, logq(root_logits)[first])
    for _ in range(length - 1):
        logits = expander.expand(leaves)
        q = dist(logits)
        for i, leaf in enumerate(leaves.tolist()):
            q_at[leaf] = q[i]
        nxt = q.argmax(-1) if draft_sampling.greedy else sample(q, generator)
        step_lp = logq(logits).gather(-1, nxt[:, None]).squeeze(-1)
        leaves = tree.add(leaves, nxt, tree.logp[leaves] + step_lp)
    return q_at
