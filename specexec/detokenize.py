"""Incremental detokenization: text pieces that concatenate to the decoded whole.

Decoding a growing token list is not always append-only: a token may end inside a
multi-byte character (the text ends in U+FFFD until the rest arrives), and tokenizers that
clean up spaces turn "a ." into "a." once the "." arrives. So a piece is emitted only up to
the stable part (no trailing U+FFFD, no trailing whitespace); :meth:`TextAssembler.finish`
emits whatever is left, so the pieces always join to ``decode(all tokens)``.
"""

from __future__ import annotations

import warnings
from typing import Callable


class TextAssembler:
    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self.token_ids: list[int] = []
        self.shown = ""  # text emitted so far

    def add(self, token_ids: list[int]) -> str:
        """Take new tokens; return the text they make stable (may be empty)."""
        self.token_ids.extend(token_ids)
        text = self._decode(self.token_ids)
        stable = text.rstrip("\ufffd").rstrip()
        if len(stable) <= len(self.shown) or not stable.startswith(self.shown):
            return ""
        piece = stable[len(self.shown):]
        self.shown = stable
        return piece

    def finish(self, token_ids: list[int] = ()) -> str:
        """Take the last tokens; return every character not emitted yet."""
        self.token_ids.extend(token_ids)
        text = self._decode(self.token_ids)
        if not text.startswith(self.shown):  # not seen with the tokenizers tested; say so rather than emit twice
            warnings.warn(f"the decoded text changed after it was streamed: {self.shown!r} -> {text!r}")
            return ""
        piece = text[len(self.shown):]
        self.shown = text
        return piece
