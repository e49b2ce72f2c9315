"""The rotation of streamed layers through a few buffers, shared by both offloading tiers.

Loads are numbered by *position* k = 0, 1, 2, ...: position k holds streamed layer
``layers[k % n]`` in buffer ``k % slots``. Passes run the layers in order, so the load of
position k + slots is issued as soon as position k has been computed and its buffer released:
while layer i computes, the next ``slots - 1`` layers are already loading, and after the last
layer of a pass the first layers of the next pass load (wrap-around). A pass that does not
start where the rotation expects (the first pass, a pass cut short by an exception) restarts
the rotation at the layer that runs.
"""

from __future__ import annotations


class RingSchedule:
    def __init__(self, layers: list[int], slots: int):
        if not layers:
            raise ValueError("nothing to stream")
        self.layers = list(layers)
        self.n = len(self.layers)
        self.slots = max(1, min(int(slots), self.n))  # more buffers than layers would hold duplicates
        self._where = {layer: j for j, layer in enumerate(self.layers)}
        self.next_compute: int | None = None  # position of the next layer to run
        self.next_issue = 0  # first position not yet issued
        self.restarts = 0

    def layer_at(self, k: int) -> int:
        return self.layers[k % self.n]

    def slot_at(self, k: int) -> int:
        return k % self.slots

    def position_of(self, layer: int) -> int | None:
        """The position of ``layer`` if it is the one the rotation expects next, else None."""
        k = self.next_compute
        return k if k is not None and self.layer_at(k) == layer else None

    def restart(self, layer: int) -> list[int]:
        """Start over at ``layer`` (every buffer free): the positions to issue now."""
        k = self.next_issue + (self._where[layer] - self.next_issue) % self.n
        if self.next_compute is not None:
            self.restarts += 1
        self.next_compute = k
        self.next_issue = k + self.slots
        return list(range(k, k + self.slots))

    def finish(self) -> int:
        """The expected layer has run and its buffer is free: the position to issue into that buffer."""
        assert self.next_compute is not None
        self.next_compute += 1
        k = self.next_issue
        self.next_issue += 1
        return k
