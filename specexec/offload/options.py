"""Offloading settings, checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OffloadError

MODES = ("disk", "cpu")
NO_CUDA = "--offload cpu needs a CUDA GPU; on a CPU-only machine use --offload disk"


@dataclass(frozen=True)
class OffloadOptions:
    """``mode``: None (resident), ``"disk"`` (layers read from the safetensors files each pass, computed on
    the CPU) or ``"cpu"`` (layers in pinned CPU RAM, copied to a CUDA GPU each pass); ``device_size``:
    layer buffers in rotation; ``keep_layers``: the first K decoder layers stay resident."""

    mode: str | None = None
    device_size: int = 2
    keep_layers: int = 0

    def __post_init__(self):
        if self.mode not in (None, *MODES):
            raise OffloadError(f"offload must be 'cpu' or 'disk' (or none), got {self.mode!r}")
        for name, low in (("device_size", 1), ("keep_layers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = name.replace("_", "-")
                raise OffloadError(f"--{flag} must be an integer >= {low}, got {value!r}")

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
