"""Choosing a draft model for a target: a named model, the target itself, a truncated copy, or the
distilled draft shipped for the embedded target."""

from __future__ import annotations

from .errors import ModelLoadError
from .models import DEFAULT_DRAFT_LAYERS, EMBEDDED, LoadedModel, load_model, parse_draft, truncated_copy


def default_draft(name: str | None, target: LoadedModel, *, dtype="float32", device="cpu",
                  draft_layers: int | None = None):
    """The draft for ``target``: (model, tokenizer), or (None, None) for 'none'.

    ``name`` may be a model name as for :func:`load_model`, ``self`` (the target drafts for
    itself), ``truncated:K`` (the target's first K layers), ``none``, or None for the
    default: the distilled draft shipped with the package for the embedded target, else
    the target's first ``draft_layers`` (default 4) layers.
    """
    kind, layers_asked = parse_draft(name)
    if kind == "none":
        return None, None
    if kind == "self":
        return target.model, target.tokenizer
    if kind == "truncated" and layers_asked is not None:
        total = target.model.config.get_text_config().num_hidden_layers
        if layers_asked > total:
            raise ModelLoadError(f"bad draft {name!r}: the target has only {total} layers")
        return truncated_copy(target.model, layers_asked), target.tokenizer
    if name is None and target.name == EMBEDDED and draft_layers is None:
        from .distill.shipped import load_shipped_draft, shipped_available

        if shipped_available():
            return load_shipped_draft(target.model), target.tokenizer
    if kind in ("default", "truncated"):
        return truncated_copy(target.model, draft_layers or DEFAULT_DRAFT_LAYERS), target.tokenizer
    loaded = load_model(name, dtype=dtype, device=device)
    return loaded.model, loaded.tokenizer
