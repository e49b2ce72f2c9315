"""A preallocated KV cache that a speculative decoder can commit into.

Each layer owns one buffer (batch, heads, capacity, head_dim) for keys and one for values.
A forward pass writes its new entries at ``[length, length + n)`` and attends to the
view ``[:length + n]``; nothing is reallocated per step (capacity doubles on the rare
overflow). After verification, :meth:`SlotCache.commit` keeps a chosen subset of the
new entries by one index copy per layer and drops the rest.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class SlotLayer(DynamicLayer):
    """One layer's preallocated key/value buffers."""

    def __init__(self, capacity: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_zeros(b, h, self.capacity, d)
        self._v = value_states.new_zeros(b, value_states.shape[1], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        new_cap = max(needed, 2 * self.capacity)
        for name in ("_k", "_v"):
            old = getattr(self, name)
            buf = old.new_zeros(old.shape[0], old.shape[1], new_cap, old.shape[3])
            buf[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, buf)
        self.capacity = new_cap

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            self._grow(end)
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        return self._k[:, :, :end], self._v[:, :, :end]

    @property
    def keys(self):  # read by generic transformers code
        return None if self._k is None else self._k[:, :, : self.length]

    @keys.setter
    def keys(self, value):
        if value is not None:
            raise AttributeError("SlotLayer keys are managed through update/commit")

    @property
    def values(self):
        return None if self._v is None else self._v[:, :, : self.length]

    @values.setter
    def values(self, value):
        if value is not None:
            raise AttributeError("SlotLayer values are managed through update/commit")

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        self.length = 0

    def crop(self, tokens_to_remove: int) -> None:
        self.length = max(0, self.length + tokens_to_remove) if tokens_to_remove < 0 else tokens_to_remove

    def commit(self, base: int, keep: torch.Tensor) -> None:
        """Keep entries ``keep`` (absolute positions, ascending, all >= base) at ``base, base+1, ...``."""
        k = keep.numel()
        if k:
            self._k[:, :, base : base + k] = self._k.index_select(2, keep)
            self._v[:, :, base : base + k] = self._v.index_select(2, keep)
        self.length = base + k


class SlotCache(Cache):
    """A :class:`transformers.Cache` of :class:`SlotLayer`s, one per decoder layer."""

    def __init__(self, capacity: int = 256):
        super().__init__(layer_class_to_replicate=lambda: SlotLayer(capacity))
        self.capacity = capacity

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def commit(self, base: int, keep: torch.Tensor) -> None:
        for layer in self.layers:
            layer.commit(base, keep)

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.length = min(layer.length, length)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
