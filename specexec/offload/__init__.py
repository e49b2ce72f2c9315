"""Target-weight offloading: a model's decoder layers streamed through a few buffers each pass.

Two tiers, one mechanism (hooks on the model's own decoder layers, a shared rotation):

- ``disk``: the layers stay in the safetensors files; a background thread reads each one, past the
  page cache, into one of ``device_size`` RAM blocks while the CPU computes the layer before it.
- ``cpu`` (the paper's): the layers sit in pinned CPU RAM, one block each, and are copied into
  ``device_size`` GPU buffers on a side CUDA stream ordered by events.

Embeddings, final norm, head and the first ``keep_layers`` decoder layers stay resident.

Modules: :mod:`.options` (settings), :mod:`.layout` (safetensors headers), :mod:`.plan` (a layer's
tensors and buffer layout), :mod:`.reader` (reads past the page cache), :mod:`.scheduler` (the
rotation), :mod:`.disk` / :mod:`.ram` (the tiers' transports), :mod:`.streamer` (the hooks),
:mod:`.loading` (building the model on the meta device).
"""

from .loading import load_offloaded, resident_state_dict
from .options import MODES, NO_CUDA, OffloadOptions

__all__ = ["MODES", "NO_CUDA", "OffloadOptions", "is_offloaded", "load_offloaded", "resident_state_dict"]


def is_offloaded(model) -> bool:
    return getattr(model, "specexec_offload", None) is not None
