"""What one forward pass costs as a function of the tokens it scores: the cost profile.

A :class:`CostProfile` holds measured seconds per pass of the target and of the draft at a
few token counts (1, 2, 4, ...), for one model pair, dtype, device and offload mode. Between
points the cost is interpolated linearly; past the last point it is extrapolated from the
last two. :func:`measure` times passes through the engine's own runners (mask building and
streaming included), over a short random prefix, stopping where a larger pass can no
longer pay or the time allowed is spent.
"""

from __future__ import annotations

import math
import statistics
import time
from bisect import bisect_left
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..runner import ModelRunner

PREFIX_TOKENS = 32  # cached context under the timed passes
REPEAT_BELOW_SECONDS = 0.1  # passes faster than this are timed three times (median)


def _points(raw) -> dict[int, float]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError("no measured points")
    points = {int(k): float(v) for k, v in raw.items()}
    if min(points) < 1 or not all(math.isfinite(v) and v > 0 for v in points.values()):
        raise ValueError("a point is not a positive finite time")
    return dict(sorted(points.items()))


def _interpolate(points: dict[int, float], n: float) -> float:
    xs = list(points)
    ys = [points[x] for x in xs]
    if n <= xs[0] or len(xs) == 1:
        return ys[0] * (n / xs[0] if n > xs[0] else 1.0)
    i = min(max(bisect_left(xs, n), 1), len(xs) - 1)  # extrapolates from the last segment past the end
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(y0 + (y1 - y0) * (n - x0) / (x1 - x0), ys[0])


@dataclass
class CostProfile:
    """Seconds per forward pass against the number of new tokens, for the target and the draft."""

    target: dict[int, float]
    draft: dict[int, float]

    def __post_init__(self):
        self.target = _points(self.target)
        self.draft = _points(self.draft) if self.draft else {}

    def target_seconds(self, n: int) -> float:
        return _interpolate(self.target, n)

    def draft_seconds(self, n: int) -> float:
        return _interpolate(self.draft, n) if self.draft else 0.0

    @property
    def largest_target_pass(self) -> int:
        return max(self.target)

    def to_dict(self) -> dict:
        return {"target": {str(k): v for k, v in self.target.items()},
                "draft": {str(k): v for k, v in self.draft.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "CostProfile":
        return cls(target=data["target"], draft=data.get("draft") or {})

    def table(self) -> list[dict]:
        """One row per measured token count: seconds per pass and the ratio to a 1-token pass."""
        rows = []
        t1 = self.target_seconds(1)
        d1 = self.draft_seconds(1) if self.draft else None
        for n in sorted(set(self.target) | set(self.draft)):
            row = {"tokens": n, "target_s": self.target.get(n), "target_x": None, "draft_s": self.draft.get(n),
                   "draft_x": None}
            if row["target_s"] is not None:
                row["target_x"] = row["target_s"] / t1
            if row["draft_s"] is not None and d1:
                row["draft_x"] = row["draft_s"] / d1
            rows.append(row)
        return rows


def powers_of_two(limit: int) -> list[int]:
    sizes, n = [], 1
    while n <= limit:
        sizes.append(n)
        n *= 2
    if sizes[-1] != limit:
        sizes.append(limit)
    return sizes


@torch.no_grad()
def time_passes(runner: ModelRunner, sizes: list[int], *, stop_ratio: float | None = None,
                seconds: float = 5.0, context_limit: int | None = None) -> dict[int, float]:
    """Seconds per forward pass of ``runner`` at each token count in ``sizes`` (ascending).

    Stops early once a pass costs more than ``stop_ratio`` times the first size's, or once
    ``seconds`` are spent (at least two sizes are always timed). The runner's cache is reset.
    """
    if not sizes:
        raise ConfigError("no pass sizes to time")
    vocab = runner.vocab_size
    gen = torch.Generator().manual_seed(0)
    room = (context_limit or 1 << 30) - PREFIX_TOKENS
    prefix = min(PREFIX_TOKENS, max(1, (context_limit or 1 << 30) // 2))
    depth_span = max(1, min(32, room))  # tree positions: prefix + depth, as in a real tree pass
    device = runner.device
    runner.reset()
    ids = torch.randint(vocab, (prefix,), generator=gen).to(device)
    runner.forward_chain(ids, 0)
    runner.commit(torch.arange(prefix, device=device))

    def one_pass(n: int) -> float:
        tokens = torch.randint(vocab, (n,), generator=gen).to(device)
        positions = prefix + torch.arange(n, device=device) % depth_span
        visible = torch.ones(n, prefix + n, dtype=torch.bool, device=device)
        visible[:, prefix:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        runner.synchronize()
        start = time.perf_counter()
        runner.forward(tokens, positions, visible)
        runner.synchronize()
        elapsed = time.perf_counter() - start
        runner.rollback()
        return elapsed

    try:
        one_pass(sizes[0])  # warm-up
        out: dict[int, float] = {}
        began = time.perf_counter()
        for i, n in enumerate(sizes):
            first = one_pass(n)
            times = [first] if first >= REPEAT_BELOW_SECONDS else [first, one_pass(n), one_pass(n)]
            out[n] = statistics.median(times)
            if i >= 1 and stop_ratio is not None and out[n] > stop_ratio * out[sizes[0]]:
                break
            if i >= 1 and time.perf_counter() - began > seconds:
                break
        return out
    finally:
        runner.reset()


def measure(target: ModelRunner, draft: ModelRunner | None, *, max_tokens: int, max_draft_tokens: int,
            stop_ratio: float, seconds: float = 8.0, context_limit: int | None = None) -> CostProfile:
    """Time the target at 1 .. ``max_tokens`` new tokens and the draft at 1 .. ``max_draft_tokens``."""
    share = seconds * (0.7 if draft is not None else 1.0)
    t = time_passes(target, powers_of_two(max_tokens), stop_ratio=stop_ratio, seconds=share,
                    context_limit=context_limit)
    d = {}
    if draft is not None:
        d = time_passes(draft, powers_of_two(max_draft_tokens), seconds=seconds - share, context_limit=context_limit)
    return CostProfile(target=t, draft=d)
