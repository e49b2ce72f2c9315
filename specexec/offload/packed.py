"""Streaming quantized decoder layers in their packed form.

A quantized weight is several tensors: torchao's ``Int8Tensor`` holds int8 ``qdata`` and float
scales; a bitsandbytes ``Params4bit`` holds two 4-bit codes a byte plus its quantization state's
``absmax`` and code book. :func:`stream_packed` takes a resident quantized model, runs it once (so
that a kernel that repacks weights on first use, as bitsandbytes does on AVX512-BF16 CPUs, has done
so), writes every streamed layer's tensors as they are then, one safetensors file a layer (a
cached *packed store*), frees them, and streams the layers from that store through the usual
transports, every tensor in its own dtype. Per pass the reader moves the packed bytes only.

A compressed-tensors module (a checkpoint of ``quant_method: compressed-tensors``) is
decompressed to float weights as the model loads; the store holds it compressed again by
its own format (for ``pack-quantized``: int4 or int8 values packed in int32, the scales), checked to
decompress to exactly the weights the resident model computes with, and each pass decompresses it
on arrival.

A :class:`Packing` rebuilds each parameter from the buffer's views before every layer runs:
a fresh object each time, so no state a kernel builds for one layer's weights survives into
another layer's (the buffers are shared by the layers in rotation).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import OffloadError
from .layout import DTYPES, read_header
from .plan import PACK_ALIGN, LayerPlan, find_decoder_layers, owner

SEP = "::"  # "<parameter>::<piece>" names a piece of a parameter in the packed store


class Packing:
    """How each streamed parameter is cut into plain tensors and put back together."""

    def __init__(self):
        # (layer, param) -> (kind, what rebuilding needs, piece names)
        self.kinds: dict[tuple[int, str], tuple[str, object, list[str]]] = {}
        self.names: dict[int, list[str]] = {}

    def cut(self, index: int, local: str, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """The plain tensors of one parameter, by piece name; remembers how to rebuild it."""
        if type(param).__name__ == "Params4bit":
            kind, template = "bnb4", _bnb_template(param)
            pieces = {"data": param.data, **{f"qs.{k}": v for k, v in _state_tensors(param.quant_state).items()}}
        elif hasattr(param, "__tensor_flatten__") and type(param) not in (torch.Tensor, torch.nn.Parameter):
            names, ctx = param.__tensor_flatten__()
            kind, template = "subclass", (type(param), ctx, tuple(param.size()), tuple(param.stride()))
            pieces = {n: getattr(param, n) for n in names}
        elif type(param) in (torch.Tensor, torch.nn.Parameter):
            kind, template, pieces = "plain", None, {"": param.data}
        else:
            raise OffloadError(f"decoder layer {index}: parameter {local} is a {type(param).__name__}, which "
                               "offloading cannot stream (supported: float tensors, torchao int8, bitsandbytes 4-bit, "
                               "compressed-tensors modules)")
        _check_pieces(f"decoder layer {index}: parameter {local}", pieces)
        self.names.setdefault(index, []).append(local)
        self.kinds[index, local] = (kind, template, list(pieces))
        return pieces

    def cut_layer(self, index: int, layer: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every plain tensor of decoder layer ``index``, keyed '<param>::<piece>'; a compressed-tensors
        module is cut as a whole (its weight compressed, with its quantization parameters)."""
        from ..quantize import compressed_tensors_scheme

        pieces, covered = {}, set()
        for name, module in layer.named_modules():
            scheme = compressed_tensors_scheme(module)
            if scheme is None:
                continue
            prefix = f"{name}." if name else ""
            compressor, packed, names = _ct_compress(index, prefix, module, scheme)
            local = prefix + "weight"
            _check_pieces(f"decoder layer {index}: {local} compressed by compressed-tensors", packed)
            self.names.setdefault(index, []).extend(prefix + n for n in names)
            for n in names:
                self.kinds[index, prefix + n] = ("ct-part", None, [])
                covered.add(prefix + n)
            self.kinds[index, local] = ("ct", (compressor, scheme, prefix, names), list(packed))
            pieces.update({local + SEP + k: v for k, v in packed.items()})
        for local, param in layer.named_parameters():
            if local not in covered:
                pieces.update({local + SEP + k: v for k, v in self.cut(index, local, param).items()})
        return pieces

    def param_names(self, index: int) -> list[str]:
        return self.names[index]

    def assemble(self, index: int, views: dict[str, torch.Tensor]) -> dict[str, torch.nn.Parameter]:
        """Layer ``index``'s parameters over one buffer's views (``views`` keyed '<param>::<piece>')."""
        out = {}
        for local in self.names[index]:
            kind, template, names = self.kinds[index, local]
            if kind == "plain":
                out[local] = views[local + SEP]
                continue
            if kind == "ct-part":  # filled in by its module's weight
                continue
            if kind == "ct":
                compressor, scheme, prefix, params = template
                dense = compressor.decompress({n: views[local + SEP + n].data for n in names}, scheme)
                for n in params:
                    out[prefix + n] = torch.nn.Parameter(dense[n], requires_grad=False)
                continue
            pieces = {n: views[local + SEP + n].data for n in names}
            if kind == "subclass":
                cls, ctx, size, stride = template
                out[local] = torch.nn.Parameter(cls.__tensor_unflatten__(pieces, ctx, size, stride),
                                                requires_grad=False)
            else:
                out[local] = _params4bit(template, pieces)
        return out


def _check_pieces(what: str, pieces: dict[str, torch.Tensor]) -> None:
    """Refuse, naming ``what``, a piece the packed store cannot hold: not a plain tensor, or of a dtype
    safetensors offloading does not read."""
    for piece, tensor in pieces.items():
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.dtype not in DTYPE_NAMES:
            raise OffloadError(f"{what} holds a {type(tensor).__name__} of {tensor.dtype} ({piece or 'data'}), "
                               "which offloading cannot stream")


def _ct_compress(index: int, prefix: str, module, scheme):
    """A compressed-tensors module's parameters compressed by its format: (the format's compressor, the
    compressed tensors, the module's parameter names), checked to decompress to the module's own tensors."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format

    fmt = scheme.format or infer_module_format(type(module), scheme)
    fmt = getattr(fmt, "value", fmt)
    compressor = BaseCompressor.get_value_from_registry(fmt)
    state = {n: p.data for n, p in module.named_parameters(recurse=False)}
    # quantized again in float32: in bfloat16 the division by the scale rounds to a coarser grid than the
    # integers it must recover; the tensors compressing leaves as they were keep their own dtype
    wide = {n: t.float() if t.is_floating_point() else t for n, t in state.items()}
    with torch.no_grad():
        packed = compressor.compress(wide, scheme)
        packed = {k: state[k] if k in state and torch.equal(v, wide[k]) else v for k, v in packed.items()}
        dense = compressor.decompress(packed, scheme)
    where = f"decoder layer {index}: {prefix}weight ({fmt}, compressed-tensors)"
    for n, t in state.items():
        if n not in dense:
            raise OffloadError(f"{where}: its format drops the parameter {n}; it cannot be streamed exactly")
        if dense[n].dtype != t.dtype or not torch.equal(dense[n], t):
            raise OffloadError(f"{where}: {prefix}{n} does not decompress to the tensor it computes with; "
                               "it cannot be streamed exactly")
    return compressor, {k: v.contiguous() for k, v in packed.items()}, list(state)


def _state_tensors(qs, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a bitsandbytes QuantState (and its nested state2), by attribute path."""
    out = {}
    for key, value in vars(qs).items():
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif key == "state2" and value is not None:
            out.update(_state_tensors(value, prefix + "state2."))
    return out


def _state_copy(qs, tensors: dict):
    """A copy of QuantState ``qs`` (and of its nested state2) with the tensors at the paths of ``tensors``
    replaced by its values."""
    qs = copy.copy(qs)
    if getattr(qs, "state2", None) is not None:
        qs.state2 = copy.copy(qs.state2)
    for path, value in tensors.items():
        holder, _, attr = path.rpartition(".")
        setattr(qs.state2 if holder else qs, attr, value)
    return qs


def _bnb_template(param) -> dict:
    """What rebuilding a Params4bit needs, without its tensors (which must not stay in RAM)."""
    qs = param.quant_state
    return {"quant_state": _state_copy(qs, dict.fromkeys(_state_tensors(qs))), "blocksize": param.blocksize,
            "compress_statistics": param.compress_statistics, "quant_type": param.quant_type,
            "quant_storage": param.quant_storage, "module": param.module}


def _params4bit(template: dict, pieces: dict[str, torch.Tensor]):
    from bitsandbytes.nn import Params4bit

    qs = _state_copy(template["quant_state"], {k[3:]: v for k, v in pieces.items() if k.startswith("qs.")})
    rest = {k: v for k, v in template.items() if k != "quant_state"}
    return Params4bit(data=pieces["data"], requires_grad=False, quant_state=qs, bnb_quantized=True, **rest)


def store_key(model, source: str) -> str:
    """What the packed store depends on: the checkpoint (``source``), the quantization, the libraries."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchao", "bitsandbytes", "compressed-tensors", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    _, layers = find_decoder_layers(model)
    params = list(layers[0].parameters())
    kinds = sorted({type(p).__name__ for p in params} | {str(p.dtype) for p in params})
    packed_cpu = any(getattr(getattr(p, "quant_state", None), "packing_format_for_cpu", False) for p in params)
    quantization = getattr(model.config, "quantization_config", None)
    text = json.dumps([source, len(layers), versions, kinds, packed_cpu, quantization and str(quantization)],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stream_packed(model, options, store_root: Path, source: str, reader=None):
    """Stream ``model``'s decoder layers from ``options.keep_layers`` on from a packed store under
    ``store_root`` (written once per ``source`` and quantization); returns the model."""
    from .loading import attach

    layers_name, layers = find_decoder_layers(model)
    first = min(options.keep_layers, len(layers))
    if first >= len(layers):
        return model
    from ..quantize import describe

    device = next(model.parameters()).device
    model.specexec_quantization = describe(model)
    with torch.no_grad():  # a first run: kernels that repack weights on first use do it now
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    packing = Packing()
    pieces_by_layer = {}  # every layer is stored, so that any keep_layers finds its layers in one store
    for i in range(len(layers)):
        pieces_by_layer[i] = packing.cut_layer(i, layers[i])
    folder = store_root / store_key(model, source)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per store; readers wait for it to be complete
        if not (folder / "complete").exists():
            _write_store(folder, pieces_by_layer)
        try:
            plans = _plans(folder, pieces_by_layer, first)
        except OffloadError as err:  # a damaged cache: written again from the model in memory
            warnings.warn(f"specexec: rebuilding the packed layer store {folder}: {err}", RuntimeWarning,
                          stacklevel=2)
            _write_store(folder, pieces_by_layer)
            plans = _plans(folder, pieces_by_layer, first)
    for i in range(first, len(layers)):  # the resident copies go: the store is what streams now
        for local in packing.param_names(i):
            module, pname = owner(layers[i], local)
            old = module._parameters[pname]
            module._parameters[pname] = torch.nn.Parameter(torch.empty(old.shape, dtype=old.dtype, device="meta"),
                                                           requires_grad=False)
            if getattr(module, "quant_state", None) is not None:  # bitsandbytes keeps one on the module too
                module.quant_state = None
    del pieces_by_layer
    slots = options.slots(plans)
    if options.mode == "disk":
        from .disk import DiskTransport

        transport = DiskTransport(plans, slots, None, reader)
    else:
        from .ram import RamTransport

        transport = RamTransport(plans, slots, None, device, reader)
    model.specexec_layers_name = layers_name
    model.specexec_packed_store = folder
    return attach(model, layers, plans, transport, options, packing)


def _plans(folder: Path, pieces_by_layer: dict[int, dict[str, torch.Tensor]], first: int) -> list[LayerPlan]:
    """The read plans of the store's layers from ``first`` on, checked against the model's pieces and the
    files' sizes."""
    plans = []
    for i, pieces in pieces_by_layer.items():
        if i < first:
            continue
        entries, _ = read_header(folder / f"layer-{i:05d}.safetensors")
        entries = {k: v for k, v in entries.items() if not k.startswith("__pad__")}
        if {k: (v.dtype, v.shape) for k, v in entries.items()} != \
                {k: (t.dtype, tuple(t.shape)) for k, t in pieces.items()}:
            raise OffloadError(f"decoder layer {i}: the store's tensors do not match the model's")
        plan = LayerPlan(i, entries)
        plan.check_files()
        plans.append(plan)
    return plans


def _write_store(folder: Path, pieces_by_layer: dict[int, dict[str, torch.Tensor]]) -> None:
    """Write the store into a new folder, then put it in place of any older one (under the store's lock)."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".packing-"))
    old = folder.parent / f".old-{folder.name}-{os.getpid()}"
    try:
        for i, pieces in pieces_by_layer.items():
            write_aligned(tmp / f"layer-{i:05d}.safetensors", pieces)
        (tmp / "complete").write_text("")
        if folder.exists():  # damaged or interrupted: readers that have it open keep their files
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def write_aligned(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file whose every tensor starts at a multiple of ``PACK_ALIGN`` bytes in the file,
    so that its views in a 4096-aligned read buffer are aligned as freshly allocated tensors are (CPU
    kernels may round differently for other alignments). The gaps are filled by padding tensors
    (``__pad__N``) so that the file stays valid safetensors."""
    header, order, offset = {}, [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        gap = -offset % PACK_ALIGN
        if gap:
            pad = f"__pad__{len(order)}"
            header[pad] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            order.append(bytes(gap))
            offset += gap
        data = tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        order.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % PACK_ALIGN)  # the data starts aligned too
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for data in order:
            f.write(data)


def layer_copy(model, layers, index: int) -> torch.nn.Module:
    """A resident copy of decoder layer ``index`` of a quantized model (its weights read from the packed
    store if it streams), without the streaming hooks."""
    layer = copy.deepcopy(layers[index])
    for hooks in (layer._forward_pre_hooks, layer._forward_hooks, layer._forward_hooks_always_called,
                  layer._forward_hooks_with_kwargs, layer._forward_pre_hooks_with_kwargs):
        hooks.clear()
    streamer = getattr(model, "specexec_offload", None)
    if streamer is None or index not in streamer.plans:
        return layer
    from .reader import read_once

    plan = streamer.plans[index]
    views = {k: torch.nn.Parameter(v, requires_grad=False) for k, v in plan.raw_views(read_once(plan)).items()}
    for local, value in streamer.packing.assemble(index, views).items():
        module, pname = owner(layer, local)
        module._parameters[pname] = value
    return layer
