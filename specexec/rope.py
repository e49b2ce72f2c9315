"""Rotary schemes whose frequencies depend on the sequence length, and how to stay exact with them.

transformers picks such a scheme's frequencies once per forward pass, from the largest
position in it:

* ``longrope`` (Phi-3 and friends): short factors while the context is at most
  ``original_max_position_embeddings`` (T), long factors past it. Phi-3's ``generate``
  also re-encodes the whole prefix with the long factors the first time the sequence passes
  T; a model without that override keeps its short-factor cache and mixes.
* ``dynamic`` NTK: the original frequencies up to ``max_position_embeddings``, rescaled
  per step beyond it (and keys cached with each step's own frequencies).

A tree pass covers many positions at once, so it must never straddle T: below T the tree's
depth is capped so that its deepest node stays at context <= T; past T every pass uses the
long factors, and (where ``generate`` re-encodes) a cache written with the short factors is
re-encoded once. Dynamic NTK is exact up to ``max_position_embeddings``, which is where the
engine's context ends anyway.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthSwitch:
    """Frequencies switch when the context grows past ``threshold`` tokens."""

    threshold: int
    reencode: bool  # generate re-encodes the prefix with the new frequencies at the switch

    def scheme(self, context: int) -> str:
        """The frequency set used by a pass whose largest context length is ``context``."""
        return "long" if context > self.threshold else "short"

    def depth_cap(self, length: int) -> int | None:
        """The deepest a tree rooted at context ``length`` may grow without straddling the switch."""
        return self.threshold - length if length <= self.threshold else None


def _rope_types(config) -> list[dict]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        return list(params.values())  # one set per layer type
    return [params] if isinstance(params, dict) else []


def length_switch(model) -> LengthSwitch | None:
    """The length switch of ``model``'s rotary embedding, or None when its frequencies are fixed."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for params in _rope_types(config):
        if params.get("rope_type", params.get("type")) == "longrope":
            threshold = params.get("original_max_position_embeddings") or getattr(
                config, "original_max_position_embeddings", None)
            if threshold:
                try:
                    source = inspect.getsource(type(model).prepare_inputs_for_generation)
                except (OSError, TypeError):
                    source = ""
                return LengthSwitch(int(threshold), reencode="original_max_position_embeddings" in source)
    return None
