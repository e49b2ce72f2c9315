"""Stop strings on streamed text: emit what cannot be the start of a stop string, cut at the first one."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces with :meth:`add`; each call returns the text that is safe to show.

    Text that could still become a stop string is held back until the next piece decides
    it; once a stop string appears, :attr:`stopped` is set and the text is cut before it
    (the stop string itself is not shown). :meth:`flush` returns what is held back at the end.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def add(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            self._held = ""
            return text[: min(cuts)]
        keep = self._longest_partial(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best
