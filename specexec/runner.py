"""One model, its KV cache, and forward passes over token trees.

A :class:`ModelRunner` keeps ``tokens[:cache_len]`` of the current sequence in a
:class:`~specexec.kv_cache.SlotCache`. :meth:`forward` runs new tokens on top of the cache
with an explicit boolean attention pattern (which of the cached + new entries each new
token sees) and explicit positions, so one call can score a whole tree. The entries it
appends are provisional until :meth:`commit` keeps the ones that matter.
"""

from __future__ import annotations

import time

import torch

from .attention import attention_layout
from .draft_vocab import output_vocab_size
from .kv_cache import SlotCache


class ModelRunner:
    def __init__(self, model, capacity: int = 512):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.cache = SlotCache(capacity)
        self.layout = attention_layout(model)
        self._positions = torch.zeros(capacity, dtype=torch.long, device=self.device)  # position of each cache entry
        self.committed = 0  # entries of the cache that belong to the accepted sequence
        self.forward_seconds = 0.0
        self.forward_calls = 0
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._context_head = head if hasattr(head, "add_context") else None  # a reduced draft head

    @property
    def vocab_size(self) -> int:
        return output_vocab_size(self.model)

    def reset(self) -> None:
        self.cache.reset()
        self.committed = 0
        if self._context_head is not None:
            self._context_head.reset_context()

    @property
    def cache_len(self) -> int:
        """Entries now in the cache (committed plus provisional)."""
        return self.cache.length

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Score ``input_ids`` (n,) at ``position_ids`` (n,).

        ``visible`` (n, cache_len + n) bool: which cached-then-new entries each new token attends to.
        Returns float logits (n, vocab). The n new entries are appended to the cache.
        """
        n, c = input_ids.shape[0], self.cache_len
        assert visible.shape == (n, c + n), (visible.shape, n, c)
        position_ids = position_ids.to(self.device)
        if c + n > self._positions.numel():
            grown = torch.zeros(2 * (c + n), dtype=torch.long, device=self.device)
            grown[:c] = self._positions[:c]
            self._positions = grown
        self._positions[c : c + n] = position_ids
        mask = self.layout.masks(visible.to(self.device), position_ids, self._positions[: c + n], self.dtype)
        self.synchronize()
        start = time.perf_counter()
        out = self.model(
            input_ids=input_ids.to(self.device)[None],
            position_ids=position_ids[None],
            attention_mask=mask,  # (1, 1, n, cache_len + n), or one such mask per attention type
            cache=self.cache,
            use_cache=True,
        )
        logits = out.logits[0]
        self.synchronize()
        self.forward_seconds += time.perf_counter() - start
        self.forward_calls += 1
        return logits

    def forward_chain(self, input_ids: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Causal pass over a plain continuation of the committed sequence."""
        if self._context_head is not None:  # a reduced head also scores the sequence's own tokens
            self._context_head.add_context(input_ids)
        n = input_ids.shape[0]
        c = self.cache_len
        visible = torch.ones(n, c + n, dtype=torch.bool, device=self.device)
        visible[:, c:] = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        positions = torch.arange(start_pos, start_pos + n, device=self.device)
        return self.forward(input_ids, positions, visible)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def commit(self, keep: torch.Tensor) -> None:
        """Keep provisional entries ``keep`` (absolute cache positions, ascending) after the committed ones."""
        keep = keep.to(self.device)
        k = keep.numel()
        self._positions[self.committed : self.committed + k] = self._positions[keep]
        self.cache.commit(self.committed, keep)
        self.committed += k

    def rollback(self) -> None:
        """Drop every provisional entry."""
        self.cache.truncate(self.committed)
