"""Turning logits into distributions and drawing tokens from them.

All randomness comes from a ``torch.Generator`` passed in. Draws use the exponential
trick (argmax of p / E with E ~ Exp(1) is a sample of p), which needs no host sync, and
Gumbel-top-k for k distinct tokens without replacement.
"""

from __future__ import annotations

import torch

from .config import SamplingConfig


def filter_logits(logits: torch.Tensor, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Mask (set to -inf) tokens outside top-k and outside the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``;
    the most likely token is always kept. Works on the last dimension.
    """
    logits = logits.clone()
    vocab = logits.shape[-1]
    if top_k and top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        remove_sorted = mass_before >= top_p
        remove_sorted[..., 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits.masked_fill_(remove, float("-inf"))
    return logits


def probabilities(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """The distribution a token is drawn from (float32 or float64), after temperature and filters.

    Greedy (temperature 0) gives a one-hot on the argmax.
    """
    logits = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
    if sampling.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    scaled = filter_logits(logits / sampling.temperature, sampling.top_p, sampling.top_k)
    return scaled.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of ``probs`` (..., V) -> (...)."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(-1)


def sample_distinct(probs: torch.Tensor, k: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """k tokens drawn without replacement from a 1-D distribution (Gumbel-top-k).

    Returns (tokens, valid): ``valid`` is False for draws beyond the support of ``probs``.
    """
    gumbel = -torch.empty_like(probs).exponential_(generator=generator).log()
    keys = probs.log() + gumbel
    k = min(k, probs.shape[-1])
    values, tokens = torch.topk(keys, k)
    return tokens, torch.isfinite(values)
