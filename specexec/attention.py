"""Attention masks for tree passes, one per attention type of the model's layers.

A tree pass hands the model a ready 4D additive mask, and transformers uses a 4D mask as
given: it does not add a sliding window on top. So the window is ours to apply. Each layer
has an attention type (``config.layer_types``, or every layer the same): ``full_attention``
sees every entry its ``visible`` row allows; ``sliding_attention`` also drops keys whose
position is ``sliding_window`` or more behind the query's (transformers' rule:
``kv > q - window``). Positions, not cache slots: a tree node at depth d above a prefix of
length L sits at position L - 1 + d whatever slot its key occupies.

A model whose layers mix types takes a mapping {type: mask} as its ``attention_mask``
(transformers' models with ``layer_types`` accept one); a model that uses one type takes a
plain tensor. :func:`attention_layout` refuses models whose attention this cannot express.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch

from .errors import UnsupportedModelError

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class AttentionLayout:
    types: tuple[str, ...]  # the distinct attention types of the layers, in first-seen order
    window: int | None  # sliding window (positions) of the sliding layers
    mapping: bool  # pass {type: mask} (layers of several types) rather than one tensor

    def masks(self, visible: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks (1, 1, n, keys) from ``visible`` (n, keys) bool and positions.

        ``query_pos`` (n,): positions of the new tokens; ``key_pos`` (keys,): positions of
        every key (cached entries, then the new tokens).
        """
        out = {}
        for kind in self.types:
            allowed = visible
            if kind == SLIDING:
                allowed = visible & (key_pos[None, :] > query_pos[:, None] - self.window)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            out[kind] = mask[None, None]
        return out if self.mapping else out[self.types[0]]


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _model_source(model) -> str:
    try:
        return inspect.getsource(sys.modules[type(model).__module__])
    except (OSError, TypeError, KeyError):
        return ""


def attention_layout(model) -> AttentionLayout:
    """The attention types of ``model``'s layers and how to pass their masks; refuses what it cannot drive."""
    config = _text_config(model.config)
    name = getattr(config, "model_type", type(model).__name__)
    source = _model_source(model)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if getattr(config, "attention_layers", None) or getattr(config, "attention_types", None):
        # GPT-Neo style local layers configured by another name
        kinds = set(getattr(config, "attention_layers", None) or [])
        if kinds - {"global"}:
            raise UnsupportedModelError(
                f"{name}: its local-attention layers (window_size) are not supported; only global attention is")
    if layer_types:
        types = tuple(dict.fromkeys(layer_types))
    elif window and "create_sliding_window_causal_mask" in source:
        types = (SLIDING,)  # every layer windowed (Mistral, Phi-3, Mixtral, Starcoder2 ...)
    else:
        types = (FULL,)
    unknown = [t for t in types if t not in (FULL, SLIDING)]
    if unknown:
        raise UnsupportedModelError(f"{name}: layers of type {unknown[0]!r} are not supported (only full and "
                                    "sliding-window attention can be driven with a tree mask)")
    if SLIDING in types and not (isinstance(window, int) and window > 0):
        raise UnsupportedModelError(f"{name}: sliding-attention layers without a sliding_window size")
    mapping = len(types) > 1
    if mapping and "attention_mask, dict)" not in source:
        raise UnsupportedModelError(
            f"{name}: its layers mix attention types {list(types)} but its forward does not take one mask per type")
    return AttentionLayout(types=types, window=window if SLIDING in types else None, mapping=mapping)
