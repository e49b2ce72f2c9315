"""The paper's tier: each streamed layer in one (pinned) CPU RAM block, copied into one of ``slots``
device buffers per pass.

On CUDA the copies run on a side stream: the copy into a buffer waits for the event recorded when
the compute stream released it, and the compute stream waits for the event recorded after the
copy, so copying layer i+1 overlaps computing layer i with no host synchronisation. On a CPU
``device`` (used by the tests: same rotation, same views) the copies are plain and synchronous.
"""

from __future__ import annotations

import warnings
from collections import deque

import torch

from .plan import PACK_ALIGN, LayerPlan
from .reader import LayerReader, aligned_empty


def host_block(nbytes: int, pin: bool) -> torch.Tensor:
    """A RAM block, pinned if asked and possible (else pageable, with a warning)."""
    if pin:
        try:
            return aligned_empty(nbytes, PACK_ALIGN, pin=True)
        except RuntimeError as err:
            warnings.warn(f"pinned memory unavailable ({str(err).splitlines()[0][:120]}); offloaded layers use "
                          "pageable memory, which copies to the GPU more slowly", RuntimeWarning, stacklevel=2)
    return aligned_empty(nbytes, PACK_ALIGN)


class RamTransport:
    def __init__(self, plans: list[LayerPlan], slots: int, dtype: torch.dtype | None, device: torch.device,
                 reader: LayerReader | None = None, pin: bool | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.slots = slots
        self.reader = reader or LayerReader()
        pin = self.cuda if pin is None else pin
        self.host: dict[int, torch.Tensor] = {}
        raw = aligned_empty(max(p.raw_nbytes for p in plans))
        with torch.no_grad():
            for p in plans:  # one packed block per layer, in the compute dtype (None: the file's)
                self.reader.read(p, raw)
                block = host_block(p.packed_offsets(dtype)[1], pin)
                source = p.raw_views(raw)
                for name, view in p.packed_views(block, dtype).items():
                    view.copy_(source[name])
                self.host[p.index] = block
        del raw
        size = max(b.numel() for b in self.host.values())
        self.buffers = [torch.empty(size, dtype=torch.uint8, device=self.device) if self.cuda
                        else aligned_empty(size, PACK_ALIGN) for _ in range(slots)]
        self._params = {(s, p.index): {k: torch.nn.Parameter(v, requires_grad=False)
                                       for k, v in p.packed_views(self.buffers[s], dtype).items()}
                        for s in range(slots) for p in plans}
        self.reads: deque[tuple[int, int, int]] = deque(maxlen=1 << 14)
        if self.cuda:
            self.make_streams()

    def make_streams(self) -> None:
        """The side stream, and per buffer the events 'copy done' (ready) and 'compute done' (free)."""
        self.stream = torch.cuda.Stream(self.device)
        self.ready = [torch.cuda.Event() for _ in range(self.slots)]
        self.free = [torch.cuda.Event() for _ in range(self.slots)]

    def load(self, k: int, layer: int, slot: int) -> None:
        src = self.host[layer]
        self.reads.append((k, layer, slot))
        if self.cuda:
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(self.free[slot])  # the previous layer in this buffer has run
                self.buffers[slot][: src.numel()].copy_(src, non_blocking=True)
                self.ready[slot].record(self.stream)
        else:
            self.buffers[slot][: src.numel()].copy_(src)

    def wait(self, k: int, layer: int, slot: int) -> dict[str, torch.nn.Parameter]:
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.ready[slot])
        return self._params[slot, layer]

    def release(self, k: int, slot: int) -> None:
        if self.cuda:
            self.free[slot].record(torch.cuda.current_stream(self.device))

    def cancel(self) -> None:
        """Copies already queued stay ordered by their events: nothing to drop."""

    def close(self) -> None:
        self.reader.close()
