"""Hooks that stream a model's own decoder layers through a transport's buffers.

The model's layer list is never replaced (transformers slices it). At rest a streamed layer's
parameters are meta tensors; a forward pre-hook waits for the layer's buffer and swaps the
buffer's views in as the layer's parameters; a forward post-hook (run even if the layer
raised) swaps the meta tensors back, releases the buffer and issues the next load into it.
A *packing* (:mod:`.packed`) stands between buffer and layer when a parameter is made of several
tensors (quantized weights): it names the layer's parameters and assembles them from the views.
"""

from __future__ import annotations

import time
from collections import deque

import torch

from .plan import LayerPlan, owner
from .scheduler import RingSchedule


class LayerStreamer:
    def __init__(self, layers: torch.nn.ModuleList, plans: list[LayerPlan], transport, packing=None):
        self.packing = packing
        self.plans = {p.index: p for p in plans}
        self.transport = transport
        self.schedule = RingSchedule([p.index for p in plans], transport.slots)
        self.layers = layers
        self._targets: dict[int, list[tuple[torch.nn.Module, str, str]]] = {}
        self._meta: dict[int, dict[str, torch.nn.Parameter]] = {}
        self._handles = []
        self._active: tuple[int, int] | None = None  # (layer, position) now holding a buffer
        self.computed: deque[int] = deque(maxlen=1 << 14)  # layers run, latest last
        self.wait_seconds = 0.0  # the compute thread's time blocked on loads not yet done (CUDA: none, events wait)
        for p in plans:
            layer = layers[p.index]
            targets, meta = [], {}
            for local in (packing.param_names(p.index) if packing is not None else p.params):
                module, pname = owner(layer, local)
                targets.append((module, pname, local))
                meta[local] = module._parameters[pname]
            self._targets[p.index], self._meta[p.index] = targets, meta
            self._handles.append(layer.register_forward_pre_hook(self._make_pre(p.index)))
            self._handles.append(layer.register_forward_hook(self._make_post(p.index), always_call=True))
        self._issue(self.schedule.restart(plans[0].index))  # prefetch the first pass

    @property
    def slots(self) -> int:
        return self.schedule.slots

    def _issue(self, positions) -> None:
        for k in positions:
            self.transport.load(k, self.schedule.layer_at(k), self.schedule.slot_at(k))

    def _swap(self, index: int, params: dict[str, torch.nn.Parameter]) -> None:
        for module, pname, local in self._targets[index]:
            module._parameters[pname] = params[local]

    def _make_pre(self, index: int):
        def pre(module, args):
            if self._active is not None:  # the previous layer never finished
                self._finish(*self._active)
            k = self.schedule.position_of(index)
            if k is None:  # a pass that starts where the rotation does not expect it
                self.transport.cancel()
                self._issue(self.schedule.restart(index))
                k = self.schedule.next_compute
            start = time.perf_counter()
            try:
                params = self.transport.wait(k, index, self.schedule.slot_at(k))
            except BaseException:
                self.schedule.next_compute = None  # the next pass restarts the rotation
                raise
            finally:
                self.wait_seconds += time.perf_counter() - start
            if self.packing is not None:
                params = self.packing.assemble(index, params)
            self._swap(index, params)
            self._active = (index, k)
            self.computed.append(index)

        return pre

    def _make_post(self, index: int):
        def post(module, args, output):
            if self._active is not None and self._active[0] == index:
                self._finish(*self._active)
            return output

        return post

    def _finish(self, index: int, k: int) -> None:
        self._swap(index, self._meta[index])
        self._active = None
        self.transport.release(k, self.schedule.slot_at(k))
        self._issue([self.schedule.finish()])

    def close(self) -> None:
        """Remove the hooks and stop the transport (the model can no longer run its streamed layers)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.transport.close()
