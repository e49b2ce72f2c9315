"""Choosing a draft model for a target: a named model, the target itself, a truncated copy, or the
distilled draft shipped for the embedded target."""

from __future__ import annotations

from pathlib import Path

import torch

from .draft_vocab import FULL, apply_draft_vocab, parse_draft_vocab
from .errors import ConfigError, ModelLoadError
from .machine import native_bfloat16
from .models import (DEFAULT_DRAFT_LAYERS, EMBEDDED, LoadedModel, eos_token_ids, load_model, offload_folder,
                     parse_draft, parse_dtype, truncated_copy)


def default_draft(name: str | None, target: LoadedModel, *, dtype="auto", device="cpu",
                  draft_layers: int | None = None, draft_vocab=None, quantize: str | None = None,
                  draft_dtype: str | torch.dtype | None = "auto"):
    """The draft for ``target``: (model, tokenizer), or (None, None) for 'none'.

    ``name`` may be a model name as for :func:`load_model`, ``self`` (the target drafts for
    itself), ``truncated:K`` (the target's first K layers), ``none``, or None for the
    default: the distilled draft shipped with the package for the embedded target, else
    the target's first ``draft_layers`` (default 4) layers. ``draft_vocab``: None keeps the
    head the draft's folder chooses (:mod:`specexec.draft_vocab`), ``"full"`` the full head,
    K the K most frequent tokens of its ranking. ``quantize`` ('int8' or 'int4') quantizes the
    draft's weights (:mod:`specexec.quantize`). ``draft_dtype``: the dtype the draft computes in
    (:func:`resolve_draft_dtype`; 'auto' by default).
    """
    draft_vocab = parse_draft_vocab(draft_vocab)
    kind, layers_asked = parse_draft(name)
    if kind == "none":
        return None, None
    check_draft_quantize(name, quantize)
    own = resolve_draft_dtype(draft_dtype, target.model, kind, quantize)
    model, tokenizer = _choose(name, kind, layers_asked, target, own or dtype, device, draft_layers, draft_vocab,
                               quantize)
    if own is not None and kind != "model":  # built from the target's weights, in the target's dtype
        model = model.to(own)
    if quantize is not None and kind != "model":  # built in this process: quantized in place
        from .quantize import QuantizationError, quantize_model

        try:
            model = quantize_model(model, quantize)
        except QuantizationError as err:  # a copy of a quantized target's layers
            raise ConfigError(f"--draft-quantize {quantize}: the draft copies the target's layers and {err}; "
                              "drop --draft-quantize or name a --draft model") from None
    return model, tokenizer


DRAFT_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
SELF_REFUSAL = "--draft-dtype does not apply to --draft self (the draft is the target: use --dtype)"


def parse_draft_dtype(asked: str | torch.dtype | None) -> torch.dtype | None:
    """A ``draft_dtype`` setting as a dtype; None for 'auto'. Raises ConfigError for anything else."""
    if asked is None or isinstance(asked, torch.dtype):
        return asked
    if asked not in DRAFT_DTYPES:
        raise ConfigError(f"--draft-dtype: unknown dtype {asked!r}; choose one of {', '.join(DRAFT_DTYPES)}")
    return parse_dtype(asked)  # None for 'auto'


def check_draft_dtype(name: str | None, asked, quantize: str | None, target_dtype=None) -> None:
    """What can be refused before any model loads (``target_dtype``: the dtype asked for the target, if known)."""
    dtype = parse_draft_dtype(asked)
    if dtype is None or dtype == target_dtype:
        return
    kind = parse_draft(name)[0]
    if kind == "self" and target_dtype is not None:
        raise ConfigError(SELF_REFUSAL)
    if kind not in ("self", "model") and quantize is not None:
        raise ConfigError("--draft-dtype with --draft-quantize on a copy of the target: the quantized copy computes "
                          "as its quantization decides; drop one of them")


def resolve_draft_dtype(asked: str | torch.dtype | None, target, kind: str = "default",
                        quantize: str | None = None) -> torch.dtype | None:
    """The dtype the draft computes in, or None for the target's (named drafts: the dtype asked for both).

    The draft only proposes tokens: its dtype changes speed and tokens per pass, not the greedy
    output nor the output's distribution (a seeded sampled run's text can change: the random
    draws follow the trees). 'auto': bfloat16 for a float32 target on a CPU with native bfloat16
    dot products (AVX512-BF16 or AMX), where bfloat16 matmuls cost a fraction of float32 ones;
    otherwise the target's dtype.
    """
    from .quantize import describe

    weight = target.get_input_embeddings().weight  # resident even when the decoder layers stream
    dtype = parse_draft_dtype(asked)
    if dtype is None:
        if kind == "self" or quantize is not None or weight.dtype != torch.float32 or weight.device.type != "cpu" \
                or describe(target) is not None or not native_bfloat16():
            return None
        return torch.bfloat16
    if kind == "self":
        if dtype != weight.dtype:
            raise ConfigError(SELF_REFUSAL)
        return None
    if kind != "model" and dtype == weight.dtype:
        return None  # the target's: nothing to convert
    if kind != "model" and (quantize is not None or describe(target) is not None):
        raise ConfigError("--draft-dtype with a quantized target or --draft-quantize applies to a named --draft "
                          "model only (the default draft of a quantized target keeps float32)")
    return dtype


def check_draft_quantize(name: str | None, quantize: str | None) -> None:
    if quantize is not None and parse_draft(name)[0] == "self":
        raise ConfigError("--draft-quantize does not apply to --draft self (the draft is the target: use --quantize)")


def _choose(name, kind, layers_asked, target: LoadedModel, dtype, device, draft_layers, draft_vocab, quantize):
    if kind in ("self", "truncated", "default") and draft_vocab not in (None, FULL) and \
            not (name is None and target.name == EMBEDDED and draft_layers is None):
        raise ConfigError("--draft-vocab K needs a draft with a token ranking (a `specexec distill` output or the "
                          "shipped draft), not the target or a copy of its layers")
    if kind == "self":
        return target.model, target.tokenizer
    if kind == "truncated" and layers_asked is not None:
        total = target.model.config.get_text_config().num_hidden_layers
        if layers_asked > total:
            raise ModelLoadError(f"bad draft {name!r}: the target has only {total} layers")
        return truncated_copy(target.model, layers_asked), target.tokenizer
    always = eos_token_ids(target.model, target.tokenizer)
    if name is None and target.name == EMBEDDED and draft_layers is None:
        from .distill.shipped import SHIPPED_DIR, load_shipped_draft, shipped_available

        if shipped_available():
            return apply_draft_vocab(load_shipped_draft(target.model), SHIPPED_DIR, draft_vocab, always), \
                target.tokenizer
    if kind in ("default", "truncated"):
        return truncated_copy(target.model, draft_layers or DEFAULT_DRAFT_LAYERS), target.tokenizer
    loaded = load_model(name, dtype=dtype, device=device, quantize=quantize)
    return apply_draft_vocab(loaded.model, _local_folder(name), draft_vocab, always), loaded.tokenizer


def _local_folder(name: str) -> Path | None:
    """The folder holding a draft's files (a local folder, or the hub cache's snapshot); None without one."""
    try:
        return offload_folder(name)
    except ModelLoadError:
        return None
