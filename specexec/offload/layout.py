"""Where every tensor of a safetensors checkpoint lies on disk.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to its ``dtype``, ``shape`` and ``data_offsets`` (begin, end, relative to the end of the
header), then the raw bytes. :func:`read_index` parses the headers of a model folder (one
``model.safetensors`` or the shards named by ``model.safetensors.index.json``) into absolute
byte ranges, and checks that every range lies inside its file, so that a truncated file is
refused before anything is read from it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OffloadError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint: its file and absolute byte range ``[start, end)``."""

    name: str
    file: str
    start: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    file_size: int  # bytes in the file when its header was read

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | Path) -> tuple[dict[str, TensorEntry], int]:
    """The tensors of one safetensors file, and the file's size in bytes."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise OffloadError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise OffloadError(f"{path} is truncated: its header claims {n} bytes, the file has {size}")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        raise OffloadError(f"cannot read the safetensors header of {path}: {err}") from err
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise OffloadError(f"{path}: tensor {name} has dtype {info['dtype']}, which offloading does not handle")
        b, e = info["data_offsets"]
        out[name] = TensorEntry(name, path, base + b, base + e, DTYPES[info["dtype"]], tuple(info["shape"]), size)
    return out, size


def safetensors_files(folder: str | Path) -> list[Path]:
    """The checkpoint files of a model folder, in shard order."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = json.loads(index.read_text())["weight_map"].values()
        return [folder / s for s in sorted(set(shards))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise OffloadError(f"{folder} holds no .safetensors files: offloading streams weights from safetensors "
                           "checkpoints (convert the model with save_pretrained(..., safe_serialization=True))")
    return found


def read_index(folder: str | Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint in ``folder`` (ranges are checked against file sizes by the users)."""
    index: dict[str, TensorEntry] = {}
    for path in safetensors_files(folder):
        if not path.exists():
            raise OffloadError(f"checkpoint shard {path} is missing")
        index.update(read_header(path)[0])
    return index


def check_inside(entry: TensorEntry, what: str) -> None:
    """Refuse a tensor whose bytes reach past the end of its (truncated) file."""
    if entry.end > entry.file_size:
        raise OffloadError(f"{what}: {entry.file} is truncated (tensor {entry.name} ends at byte {entry.end}, "
                           f"the file has {entry.file_size} bytes)")
