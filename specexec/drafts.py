"""Choosing a draft model for a target: a named model, the target itself, a truncated copy, or the
distilled draft shipped for the embedded target."""

from __future__ import annotations

from .errors import ModelLoadError
from .models import DEFAULT_DRAFT_LAYERS, EMBEDDED, LoadedModel, load_model, truncated_copy


def default_draft(name: str | None, target: LoadedModel, *, dtype="float32", device="cpu",
                  draft_layers: int | None = None):
    """The draft for ``target``: (model, tokenizer), or (None, None) for 'none'.

    ``name`` may be a model name as for :func:`load_model`, ``self`` (the target drafts for
    itself), ``truncated:K`` (the target's first K layers), ``none``, or None for the
    default: the distilled draft shipped with the package for the embedded target, else
    the target's first ``draft_layers`` (default 4) layers.
    """
    if name == "none":
        return None, None
    if name == "self":
        return target.model, target.tokenizer
    if name is None and target.name == EMBEDDED and draft_layers is None:
        from .distill.shipped import load_shipped_draft, shipped_available

        if shipped_available():
            return load_shipped_draft(target.model), target.tokenizer
    if name is None or (isinstance(name, str) and name.startswith("truncated")):
        layers = draft_layers or DEFAULT_DRAFT_LAYERS
        if isinstance(name, str) and ":" in name:
            try:
                layers = int(name.split(":", 1)[1])
            except ValueError as err:
                raise ModelLoadError(f"bad draft {name!r}: write truncated:K with K a number of layers") from err
        return truncated_copy(target.model, layers), target.tokenizer
    loaded = load_model(name, dtype=dtype, device=device)
    return loaded.model, loaded.tokenizer
