"""Quantized models: weight-only quantization on load, and pre-quantized checkpoints.

``quantize="int8"``: int8 weights, one scale per output row, through torchao
(``Int8WeightOnlyConfig``); runs on CPU and CUDA. ``quantize="int4"``: 4-bit NF4 weights in blocks
of 64 through bitsandbytes (two weights a byte); runs on CPU and CUDA. Both go through transformers'
own quantizer integrations when a model is loaded by name (each tensor quantized as it is read),
and through the same libraries in place for a draft built in this process (:func:`quantize_model`).
The output head and embeddings stay in the model's dtype (as transformers leaves them).

Pre-quantized checkpoints (a ``quantization_config`` in config.json) load through the backend
their ``quant_method`` names, which must be installed (:data:`BACKENDS` names the extra). docs/quantization.md
says which run on this machine's CPU.
"""

from __future__ import annotations

import importlib.util

import torch

from .errors import ModelLoadError

MODES = ("int8", "int4")
NF4_BLOCK = 64


class QuantizationError(ModelLoadError):
    """A quantization mode or backend that cannot work here (missing extra, CUDA-only, broken config)."""


# quant_method in a checkpoint's config -> (python module it needs, pip extra, needs CUDA)
BACKENDS = {
    "torchao": ("torchao", "torchao", False),
    "bitsandbytes": ("bitsandbytes", "bnb", False),
    "gptq": ("gptqmodel", "gptq", True),
    "awq": ("gptqmodel", "gptq", True),
    "compressed-tensors": ("compressed_tensors", "compressed-tensors", False),
}
MODE_BACKEND = {"int8": "torchao", "int4": "bitsandbytes"}
DESCRIPTIONS = {"int8": "Int8Tensor (torchao)", "int4": "nf4 (bitsandbytes)"}  # what describe() says of each


def parse_quantize(mode: str | None) -> str | None:
    if mode in (None, "", "none"):
        return None
    if mode not in MODES:
        raise QuantizationError(f"unknown quantization {mode!r}; choose int8 or int4 (or none)")
    return mode


def require_backend(method: str, device: torch.device | str | None = None, what: str = "") -> None:
    """A one-line error when the library for ``method`` is missing or cannot run on ``device``."""
    if method not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise QuantizationError(f"{what}quantization method {method!r} is not supported (known: {known})")
    module, extra, cuda_only = BACKENDS[method]
    dev = torch.device(device or "cpu")
    if cuda_only and dev.type != "cuda":
        raise QuantizationError(f"{what}{method} checkpoints run on CUDA GPUs only (asked: {dev}); "
                                "use --device cuda, or --quantize int8|int4 on a float checkpoint")
    if importlib.util.find_spec(module) is None:
        raise QuantizationError(f"{what}{method} quantization needs the package {module}: "
                                f"pip install 'specexec[{extra}]'")


def quantization_config(mode: str, dtype: torch.dtype):
    """The transformers quantization config for ``mode``, computing in ``dtype``."""
    require_backend(MODE_BACKEND[mode], what=f"--quantize {mode}: ")
    if mode == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=False)


def checkpoint_method(config) -> str | None:
    """The ``quant_method`` of a pre-quantized checkpoint's config, None for a float one."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method)
    if not isinstance(method, str) or not method:
        raise QuantizationError("the checkpoint's quantization_config has no quant_method: its config.json is broken")
    return method


def check_checkpoint(config, device, quantize: str | None, name: str) -> None:
    """Refuse early what cannot load: a missing backend, a CUDA-only one on the CPU, quantizing twice."""
    method = checkpoint_method(config)
    if method is None:
        return
    if quantize is not None:
        raise QuantizationError(f"{name} is already quantized ({method}): load it without quantizing it again")
    require_backend(method, device, what=f"{name}: ")
    if method == "compressed-tensors":
        _check_compressed_tensors(config.quantization_config, name)


def _check_compressed_tensors(qc, name: str) -> None:
    """Refuse the compressed-tensors layouts that do not load with the pinned libraries."""
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    for group in (qc.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        fmt = group.get("format") or qc.get("format")
        if fmt == "pack-quantized" and weights.get("symmetric") is False \
                and weights.get("strategy") in ("group", "channel"):
            raise QuantizationError(f"{name}: asymmetric pack-quantized compressed-tensors weights (packed zero "
                                    "points) do not load with transformers 5.24 and compressed-tensors 0.20; "
                                    "symmetric schemes (e.g. W4A16, W8A16) do")


def quantize_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Quantize ``model``'s float linear layers in place (all but the output head), as loading with ``mode``
    does. A model that is already quantized is refused unless it is quantized that way already."""
    require_backend(MODE_BACKEND[mode], what=f"--quantize {mode}: ")
    present = describe(model)
    if present is not None:
        if present == DESCRIPTIONS[mode]:
            return model
        raise QuantizationError(f"this model is already quantized ({present}); it cannot be quantized to {mode}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    dtype = next(model.parameters()).dtype
    skip = _modules_kept_float(model)
    linears = [(name, m) for name, m in model.named_modules()
               if type(m) is torch.nn.Linear and m is not head and type(m.weight) is torch.nn.Parameter
               and m.weight.is_floating_point() and _should_convert(name, skip)]
    if mode == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        chosen = {id(m) for _, m in linears}
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: id(m) in chosen)
        return model
    import bitsandbytes as bnb

    for name, old in linears:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None, compute_dtype=dtype,
                                compress_statistics=False, quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCK,
                                       compress_statistics=False, module=new)
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        new.to(old.weight.device)  # quantizes the weight
        new.train(old.training)  # bitsandbytes repacks 4-bit weights for CPUs with AVX512-BF16 in eval mode only
        setattr(parent, child, new)
    return model


def _modules_kept_float(model) -> list[str]:
    """The modules transformers' quantizers leave unquantized: tied and output embeddings, the last module,
    the model's ``_keep_in_fp32_modules``."""
    if not hasattr(model, "all_tied_weights_keys"):  # not a transformers model: the head alone is kept
        return []
    from transformers.quantizers.base import HfQuantizer

    return HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None),
                                                  add_default_skips=True)


def _should_convert(name: str, skip: list[str]) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, skip or None)


def describe(model) -> str | None:
    """'Int8Tensor (torchao)', 'nf4 (bitsandbytes)', ... for a quantized model, None for a float one."""
    known = getattr(model, "specexec_quantization", None)  # streamed layers hold no weights at rest
    if known is not None:
        return known
    for m in model.modules():
        scheme = compressed_tensors_scheme(m)
        if scheme is not None:
            kind, fmt = (getattr(v, "value", v) for v in (scheme.weights.type, scheme.format))
            return f"{kind}{scheme.weights.num_bits} {fmt or 'dense'} (compressed-tensors)"
        w = getattr(m, "weight", None)
        if w is None:
            continue
        if type(w).__module__.startswith("torchao"):
            return f"{type(w).__name__} (torchao)"
        if type(w).__module__.startswith("bitsandbytes"):
            return f"{getattr(w, 'quant_type', '4bit')} (bitsandbytes)"
    return None


def compressed_tensors_scheme(module):
    """The compressed-tensors scheme of a module whose weights that library quantized, else None."""
    scheme = getattr(module, "quantization_scheme", None)
    if scheme is None or getattr(scheme, "weights", None) is None or not type(scheme).__module__.startswith(
            "compressed_tensors"):
        return None
    return scheme


def decompress_now(model) -> None:
    """A compressed-tensors checkpoint loads compressed and decompresses its weights on its first forward
    pass; do it now, so that the model's layers hold their weights (a truncated draft copies them), and
    take away the parameter wrappers of compressed-tensors' own offloading that decompressing installs:
    the weights stay where they are, as plain parameters (streaming swaps them layer by layer)."""
    compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
    if compressor is not None and hasattr(model, "ct_decompress_hook"):
        from compressed_tensors.offload import remove_dispatch

        compressor.decompress_model(model)
        remove_dispatch(model, onload_tensors=True)
