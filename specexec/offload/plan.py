"""Which tensors form each decoder layer, and how one layer's bytes are laid out in a buffer.

A :class:`LayerPlan` lists a decoder layer's parameters with their place in the checkpoint and
merges their byte ranges into a few *extents*, aligned to 4096 bytes (what ``O_DIRECT`` needs),
each read in one call into one contiguous block per layer. A parameter's view in the block
starts at ``block offset of its extent + (its file offset - the extent's aligned start)``: it
keeps its file offset's alignment modulo 4096, like a tensor memory-mapped from the file.
The *packed* layout (each tensor 512-byte aligned, in the compute dtype) serves the pinned-RAM
tier and dtype conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import OffloadError
from .layout import TensorEntry, check_inside

ALIGN = 4096  # O_DIRECT alignment of file offsets, lengths and buffers
PACK_ALIGN = 512  # like CUDA's allocator: a packed tensor is aligned as a freshly allocated one
MERGE_GAP = 1 << 20  # read a gap of up to 1 MiB rather than issue another read


def _up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class Extent:
    """Bytes ``[start, end)`` of ``file`` (aligned) read to ``[offset, offset + end - start)`` of the block."""

    file: str
    start: int
    end: int
    offset: int
    data_end: int  # end of the last tensor's bytes (the file may end before ``end``)


@dataclass
class LayerPlan:
    """One decoder layer: its parameters (local name -> checkpoint entry) and its read plan."""

    index: int
    params: dict[str, TensorEntry]
    extents: list[Extent] = field(default_factory=list)
    raw_offsets: dict[str, int] = field(default_factory=dict)
    raw_nbytes: int = 0

    def __post_init__(self):
        by_file: dict[str, list[TensorEntry]] = {}
        for entry in self.params.values():
            by_file.setdefault(entry.file, []).append(entry)
        offset = 0
        for file, entries in by_file.items():
            entries.sort(key=lambda e: e.start)
            groups: list[list[TensorEntry]] = [[entries[0]]]
            for e in entries[1:]:
                if e.start - groups[-1][-1].end <= MERGE_GAP:
                    groups[-1].append(e)
                else:
                    groups.append([e])
            for group in groups:
                start = group[0].start // ALIGN * ALIGN
                data_end = max(e.end for e in group)
                end = _up(data_end, ALIGN)
                self.extents.append(Extent(file, start, end, offset, data_end))
                for e in group:
                    self.raw_offsets[e.name] = offset + e.start - start
                offset += end - start
        self.raw_nbytes = offset
        self._local = {entry.name: local for local, entry in self.params.items()}

    @property
    def files(self) -> list[str]:
        return sorted({e.file for e in self.params.values()})

    def check_files(self) -> None:
        for entry in self.params.values():
            check_inside(entry, f"decoder layer {self.index}")

    def raw_views(self, block: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layer's tensors (file dtype) inside a raw block (uint8) laid out as ``extents``."""
        out = {}
        for local, entry in self.params.items():
            o = self.raw_offsets[entry.name]
            out[local] = _view(block, o, entry.nbytes, entry.dtype, entry.shape)
        return out

    def packed_offsets(self, dtype: torch.dtype | None) -> tuple[dict[str, int], int]:
        """Offsets of each tensor in a packed block of ``dtype`` tensors (None: each in its file dtype),
        and the block's size."""
        offsets, o = {}, 0
        for local, entry in self.params.items():
            o = _up(o, PACK_ALIGN)
            offsets[local] = o
            o += _numel(entry.shape) * _size(dtype or entry.dtype)
        return offsets, _up(o, PACK_ALIGN)

    def packed_views(self, block: torch.Tensor, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        offsets, _ = self.packed_offsets(dtype)
        out = {}
        for local, entry in self.params.items():
            kind = dtype or entry.dtype
            out[local] = _view(block, offsets[local], _numel(entry.shape) * _size(kind), kind, entry.shape)
        return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _view(block: torch.Tensor, offset: int, nbytes: int, dtype: torch.dtype, shape) -> torch.Tensor:
    piece = block[offset: offset + nbytes]
    if offset % _size(dtype):
        raise OffloadError(f"a tensor at byte {offset} is not aligned to its dtype {dtype}; re-save the checkpoint "
                           "with a recent safetensors")
    return piece.view(dtype).view(shape)


def owner(layer: torch.nn.Module, local: str) -> tuple[torch.nn.Module, str]:
    """The submodule of ``layer`` holding parameter ``local`` ('mlp.up_proj.weight'), and the parameter's name."""
    path, _, name = local.rpartition(".")
    return (layer.get_submodule(path) if path else layer), name


def find_decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """The model's decoder layer list and its qualified name (``model.layers``, ``transformer.h``, ...)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None)
    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n:
            count = sum(p.numel() for p in module.parameters())
            if best is None or count > best[2]:
                best = (name, module, count)
    if best is None:
        raise OffloadError(f"cannot find the decoder layers of this {type(model).__name__} "
                           f"(no list of {n} modules): offloading does not support it")
    return best[0], best[1]


def rename_index(model, index: dict[str, TensorEntry]) -> dict[str, TensorEntry]:
    """The checkpoint index under the model's own tensor names, by the renamings transformers applies
    when loading (e.g. GPT-NeoX ``embed_out`` -> ``lm_head``). Checkpoints that need real conversions
    (fused experts, ...) keep their names and fail later as missing tensors."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        renames = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    except Exception:  # noqa: BLE001 - no mapping: names are used as they are
        renames = []
    out = {}
    for key, entry in index.items():
        name = key
        for t in renames:
            name = t.rename_source_key(name)[0]
        out[name] = entry
    return out


def checkpoint_name(name: str, index: dict, prefix: str) -> str | None:
    """The checkpoint's name for a model tensor: as is, or without / with the base model prefix."""
    if name in index:
        return name
    if prefix and name.startswith(prefix + "."):
        short = name[len(prefix) + 1:]
        if short in index:
            return short
    if prefix and f"{prefix}.{name}" in index:
        return f"{prefix}.{name}"
    return None


def plan_layers(model, index: dict[str, TensorEntry], layers_name: str, layers, first: int = 0) -> list[LayerPlan]:
    """Plans of the decoder layers ``first..`` of ``model`` against the checkpoint ``index``."""
    prefix = getattr(model, "base_model_prefix", "")
    plans = []
    files = sorted({e.file for e in index.values()})
    for i in range(first, len(layers)):
        params = {}
        for local, _ in layers[i].named_parameters():
            full = f"{layers_name}.{i}.{local}"
            key = checkpoint_name(full, index, prefix)
            if key is None:
                raise OffloadError(f"decoder layer {i}: tensor {full} is missing from the checkpoint "
                                   f"({', '.join(files)})")
            params[local] = index[key]
        plan = LayerPlan(i, params)
        plan.check_files()
        plans.append(plan)
    return plans
