"""Reading one decoder layer's bytes from its safetensors file(s) into a RAM block, past the page cache.

Files are opened with ``O_DIRECT`` where the file system allows it (the block, offsets and lengths
are 4096-aligned by the :class:`~specexec.offload.plan.LayerPlan`); otherwise they are read
normally and the range is dropped from the page cache afterwards with
``posix_fadvise(POSIX_FADV_DONTNEED)``. Either way a measurement sees the disk, not the cache.
"""

from __future__ import annotations

import errno
import os
import time

import torch

from ..errors import OffloadError
from .plan import ALIGN, LayerPlan

CHUNK = 64 << 20  # bytes per read call


def aligned_empty(nbytes: int, align: int = ALIGN, pin: bool = False) -> torch.Tensor:
    """A uint8 block whose first byte is ``align``-aligned (the slice keeps its storage alive)."""
    base = torch.empty(nbytes + align, dtype=torch.uint8, pin_memory=pin)
    off = (-base.data_ptr()) % align
    return base[off: off + nbytes]


class LayerReader:
    """Reads :class:`LayerPlan` extents into blocks; counts bytes and seconds."""

    def __init__(self, direct: bool = True):
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._fds: dict[str, tuple[int, bool]] = {}
        self.bytes_read = 0
        self.seconds = 0.0

    def _open(self, path: str) -> tuple[int, bool]:
        if path not in self._fds:
            fd, direct = -1, False
            if self.direct:
                try:
                    fd, direct = os.open(path, os.O_RDONLY | os.O_DIRECT), True
                except OSError:
                    fd = -1
            if fd < 0:
                fd = os.open(path, os.O_RDONLY)
            self._fds[path] = (fd, direct)
        return self._fds[path]

    def pread(self, fd: int, buf: memoryview, offset: int) -> int:
        """One read call (tests replace it to inject I/O errors)."""
        return os.preadv(fd, [buf], offset)

    def read(self, plan: LayerPlan, block: torch.Tensor) -> None:
        """Fill ``block`` (uint8, >= ``plan.raw_nbytes``, 4096-aligned) with the layer's extents."""
        start_t = time.perf_counter()
        view = memoryview(block.numpy())
        for ext in plan.extents:
            try:
                got = self._read_extent(ext.file, view, ext.offset, ext.start, ext.end - ext.start)
            except OSError as err:
                raise OffloadError(f"decoder layer {plan.index}: reading {ext.file} at byte {ext.start} failed: "
                                   f"{err}") from err
            if ext.start + got < ext.data_end:
                raise OffloadError(f"decoder layer {plan.index}: {ext.file} is truncated (needs bytes up to "
                                   f"{ext.data_end}, the file ends at {ext.start + got})")
            self.bytes_read += got
        self.seconds += time.perf_counter() - start_t

    def _read_extent(self, path: str, view: memoryview, offset: int, start: int, length: int) -> int:
        fd, direct = self._open(path)
        got = 0
        while got < length:
            n = min(CHUNK, length - got)
            try:
                r = self.pread(fd, view[offset + got: offset + got + n], start + got)
            except OSError as err:
                if direct and err.errno == errno.EINVAL:  # O_DIRECT refused here: read through the cache
                    os.close(fd)
                    self._fds[path] = (os.open(path, os.O_RDONLY), False)
                    fd, direct = self._fds[path]
                    continue
                raise
            if r == 0:
                break
            got += r
        if not direct:
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        return got

    @property
    def uses_direct_io(self) -> bool:
        return any(direct for _, direct in self._fds.values()) if self._fds else self.direct

    def close(self) -> None:
        for fd, _ in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def read_once(plan) -> torch.Tensor:
    """One layer's bytes read into a fresh block (laid out as ``plan.raw_views`` expects)."""
    block = aligned_empty(plan.raw_nbytes)
    reader = LayerReader()
    try:
        reader.read(plan, block)
    finally:
        reader.close()
    return block
