"""Offloading settings, checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OffloadError

MODES = ("disk", "cpu")
GPU_BUFFERS = 2  # offload="cpu": the paper's two GPU buffers (GPU memory is what the target lacks)
DISK_BUFFER_BYTES = 512 << 20  # offload="disk": as many RAM buffers as fit in this...
DISK_MAX_BUFFERS = 16  # ...up to this many (docs/offload.md: 16 read faster than 8 and 2)
NO_CUDA = "--offload cpu needs a CUDA GPU; on a CPU-only machine use --offload disk"


@dataclass(frozen=True)
class OffloadOptions:
    """``mode``: None (resident), ``"disk"`` (layers read from the safetensors files each pass, computed on
    the CPU) or ``"cpu"`` (layers in pinned CPU RAM, copied to a CUDA GPU each pass); ``device_size``:
    layer buffers in rotation, None to size them by :meth:`slots`; ``keep_layers``: the first K decoder
    layers stay resident."""

    mode: str | None = None
    device_size: int | None = None
    keep_layers: int = 0

    def __post_init__(self):
        if self.mode not in (None, *MODES):
            raise OffloadError(f"offload must be 'cpu' or 'disk' (or none), got {self.mode!r}")
        for name, low in (("device_size", 1), ("keep_layers", 0)):
            value = getattr(self, name)
            if name == "device_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = name.replace("_", "-")
                raise OffloadError(f"--{flag} must be an integer >= {low}, got {value!r}")

    def slots(self, plans) -> int:
        """Buffers for streaming the layers of ``plans``: ``device_size`` if given (at most one a layer),
        else 2 GPU buffers for ``cpu``, and for ``disk`` as many RAM buffers as DISK_BUFFER_BYTES holds
        for the largest layer, between 2 and DISK_MAX_BUFFERS: more buffers let the reader run further
        ahead, and go on reading while the draft grows a tree."""
        if self.device_size is not None:
            return min(self.device_size, len(plans))
        if self.mode != "disk":
            return min(GPU_BUFFERS, len(plans))
        largest = max(p.raw_nbytes for p in plans)
        return min(len(plans), DISK_MAX_BUFFERS, max(2, DISK_BUFFER_BYTES // max(largest, 1)))

    def compute_device(self, device: str | torch.device | None) -> torch.device:
        """Where the offloaded model computes: the CPU for ``disk``, a CUDA GPU for ``cpu``."""
        asked = torch.device(device or "cpu")
        if self.mode == "cpu":
            if not torch.cuda.is_available():
                raise OffloadError(NO_CUDA)
            return asked if asked.type == "cuda" else torch.device("cuda")
        if self.mode == "disk" and asked.type != "cpu":
            raise OffloadError(f"--offload disk computes on the CPU (device {asked} asked); "
                               "with a GPU use --offload cpu")
        return asked
