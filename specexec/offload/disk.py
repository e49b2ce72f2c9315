"""The disk tier: a background thread reads each streamed layer from the safetensors files into one
of ``slots`` RAM blocks, every pass, while the CPU computes the layers before it.

The compute thread asks for position k with :meth:`DiskTransport.wait`; a read that failed
raises there, as an :class:`~specexec.errors.OffloadError` naming the layer and the file.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from ..errors import OffloadError
from .plan import LayerPlan
from .reader import LayerReader, aligned_empty


class DiskTransport:
    def __init__(self, plans: list[LayerPlan], slots: int, dtype: torch.dtype | None,
                 reader: LayerReader | None = None):
        self.plans = {p.index: p for p in plans}
        self.slots = slots
        self.reader = reader or LayerReader()
        self.raw = [aligned_empty(max(p.raw_nbytes for p in plans)) for _ in range(slots)]
        # a checkpoint in another dtype is converted after each read into a typed block per slot
        # (dtype None: every tensor is used in its file dtype, as packed quantized layers are)
        self.convert = dtype is not None and any(e.dtype != dtype for p in plans for e in p.params.values())
        if self.convert:
            size = max(p.packed_offsets(dtype)[1] for p in plans)
            self.typed = [aligned_empty(size) for _ in range(slots)]
        self._params = {}
        for s in range(slots):
            for p in plans:
                views = p.packed_views(self.typed[s], dtype) if self.convert else p.raw_views(self.raw[s])
                self._params[s, p.index] = {k: torch.nn.Parameter(v, requires_grad=False) for k, v in views.items()}
        self._raw_views = {(s, p.index): p.raw_views(self.raw[s]) for s in range(slots) for p in plans} \
            if self.convert else {}
        self.reads: deque[tuple[int, int, int]] = deque(maxlen=1 << 14)  # (position, layer, slot) in the order read
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, int, int]] = deque()
        self._done: dict[int, Exception | None] = {}
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="specexec-layer-reader", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ compute side
    def load(self, k: int, layer: int, slot: int) -> None:
        with self._cond:
            self._queue.append((k, layer, slot))
            self._cond.notify_all()

    def wait(self, k: int, layer: int, slot: int) -> dict[str, torch.nn.Parameter]:
        with self._cond:
            while k not in self._done:
                if self._stop:
                    raise OffloadError("the layer reader was closed")
                self._cond.wait()
            err = self._done.pop(k)
        if err is not None:
            raise err
        return self._params[slot, layer]

    def release(self, k: int, slot: int) -> None:
        """Computation on ``slot`` is over (synchronous on the CPU: nothing to record)."""

    def wait_idle(self) -> None:
        """Block until no read is queued or in progress (the next pass's prefetched layers stay ready): a
        measurement of the disk alone then has it to itself."""
        with self._cond:
            while (self._queue or self._busy) and not self._stop:
                self._cond.wait()

    def cancel(self) -> None:
        """Drop queued reads and wait for the one in progress (its buffer may be reused at once)."""
        with self._cond:
            self._queue.clear()
            while self._busy:
                self._cond.wait()
            self._done.clear()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self.reader.close()

    # ------------------------------------------------------------ reader thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                k, layer, slot = self._queue.popleft()
                self._busy = True
            err = None
            try:
                self._read(layer, slot)
            except OffloadError as e:
                err = e
            except BaseException as e:  # noqa: BLE001 - surfaces in the compute thread
                files = ", ".join(self.plans[layer].files)
                err = OffloadError(f"decoder layer {layer}: reading {files} failed: {type(e).__name__}: {e}")
            with self._cond:
                self.reads.append((k, layer, slot))
                self._done[k] = err
                self._busy = False
                self._cond.notify_all()

    def _read(self, layer: int, slot: int) -> None:
        plan = self.plans[layer]
        self.reader.read(plan, self.raw[slot])
        if self.convert:
            raw = self._raw_views[slot, layer]
            with torch.no_grad():
                for name, p in self._params[slot, layer].items():
                    p.data.copy_(raw[name])
