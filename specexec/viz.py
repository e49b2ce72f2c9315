"""Seeing one iteration's tree: its tokens, their draft probabilities, the path the target kept.

:class:`TreeSnapshot` watches an engine (``engine.tree_watchers``) and copies the tree of one
target pass; :func:`draw_png` and :func:`write_html` draw it: nodes left to right by depth,
labelled with their tokens and shaded by the draft's probability of the path to them, the
accepted path in red, and the target's own token after it in orange.
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TreeSnapshot:
    """Records the tree verified at target pass ``at`` (0 = the first)."""

    at: int = 0
    tokens: list[int] = field(default_factory=list)  # node 0 is the root (the last accepted token)
    parents: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)  # cumulative draft log-probability of each node's path
    path: list[int] = field(default_factory=list)  # accepted nodes, root first
    extra: int | None = None  # the target's own token after the path
    taken: bool = False

    def __call__(self, index: int, tree, path, extra: int) -> None:
        if index != self.at or self.taken:
            return
        n = tree.size
        self.tokens = tree.tokens[:n].tolist()
        self.parents = tree.parents[:n].tolist()
        self.logp = tree.logp[:n].tolist()
        self.path = [int(i) for i in path]
        self.extra = int(extra)
        self.taken = True

    @property
    def accepted_tokens(self) -> list[int]:
        """The tokens this pass emitted: the accepted path's below the root, then the target's own."""
        return [self.tokens[i] for i in self.path[1:]] + [self.extra]


def layout(parents: list[int]) -> list[tuple[float, float]]:
    """(x = depth, y) per node: leaves one row apart in depth-first order, parents centred on their children."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        if p >= 0:
            children.setdefault(p, []).append(i)
    pos: dict[int, tuple[float, float]] = {}
    next_row = [0.0]

    def place(node: int, depth: int) -> float:  # iterative enough for trees of a few thousand nodes
        kids = children.get(node, [])
        if not kids:
            y = next_row[0]
            next_row[0] += 1
        else:
            ys = [place(k, depth + 1) for k in kids]
            y = sum(ys) / len(ys)
        pos[node] = (float(depth), y)
        return y

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * len(parents) + 100))
    place(0, 0)
    return [pos[i] for i in range(len(parents))]


def _label(decode, token: int, width: int = 14) -> str:
    text = decode([token]) if decode else str(token)
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= width else text[: width - 1] + "…"


def _figure(snap: TreeSnapshot, decode, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    pos = layout(snap.parents)
    rows = max(y for _, y in pos) + 1
    depth = max(x for x, _ in pos) + 2
    fig, ax = plt.subplots(figsize=(min(4 + 2.2 * depth, 40), min(1.5 + 0.32 * rows, 120)))
    on_path = set(snap.path)
    norm = colors.Normalize(vmin=0.0, vmax=1.0)
    shade = cm.Blues
    for i, p in enumerate(snap.parents):
        if p >= 0:
            (x0, y0), (x1, y1) = pos[p], pos[i]
            kept = i in on_path and p in on_path
            ax.plot([x0, x1], [y0, y1], color="red" if kept else "0.7", lw=2.2 if kept else 0.8, zorder=1)
    for i, (x, y) in enumerate(pos):
        prob = math.exp(snap.logp[i])
        face = shade(norm(0.15 + 0.85 * prob))
        edge = "red" if i in on_path else "0.4"
        ax.text(x, y, _label(decode, snap.tokens[i]), ha="center", va="center", fontsize=8, zorder=3,
                color="white" if prob > 0.6 else "black",
                bbox=dict(boxstyle="round,pad=0.25", fc=face, ec=edge, lw=2 if i in on_path else 0.6))
    if snap.extra is not None:
        lx, ly = pos[snap.path[-1]]
        bx, by = lx + 0.5, ly + 0.5  # between columns and rows: no node of the tree sits there
        ax.plot([lx, bx], [ly, by], color="darkorange", lw=2.2, ls="--", zorder=1)
        ax.text(bx, by, _label(decode, snap.extra), ha="center", va="center", fontsize=8, zorder=3,
                bbox=dict(boxstyle="round,pad=0.25", fc="moccasin", ec="darkorange", lw=2))
    ax.set_xlim(-0.7, depth + 0.2)
    ax.set_ylim(rows - 0.5, -0.8)
    ax.axis("off")
    accepted = len(snap.path) - 1
    ax.set_title(f"{title}\n{len(snap.tokens) - 1} draft tokens; red: accepted path ({accepted} tokens); "
                 "orange: the target's own token; shade: draft probability of the path", fontsize=9)
    sm = cm.ScalarMappable(norm=norm, cmap=shade)
    fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01, label="draft probability of the path")
    fig.tight_layout()
    return fig


def draw_png(snap: TreeSnapshot, path, decode=None, title: str = "") -> Path:
    import matplotlib.pyplot as plt

    fig = _figure(snap, decode, title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_html(snap: TreeSnapshot, path, decode=None, title: str = "", context: str = "") -> Path:
    """A standalone page: the drawing as inline SVG, the accepted text, and every node in a table."""
    import matplotlib.pyplot as plt

    fig = _figure(snap, decode, title)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog: the SVG sits inside the page
    on_path = set(snap.path)
    kept = ' class="kept"'
    rows = "\n".join(
        f"<tr{kept if i in on_path else ''}><td>{i}</td><td>{p}</td>"
        f"<td>{html.escape(_label(decode, t, 40))}</td><td>{t}</td><td>{math.exp(lp):.4f}</td></tr>"
        for i, (t, p, lp) in enumerate(zip(snap.tokens, snap.parents, snap.logp)))
    accepted = "".join(decode([t]) for t in snap.accepted_tokens) if decode else str(snap.accepted_tokens)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or 'specexec tree')}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px}} tr.kept{{background:#fdd}} .svg{{overflow:auto}}</style>
</head><body>
<h1>{html.escape(title or 'specexec tree')}</h1>
<p>{html.escape(context)}</p>
<p>This pass emitted <b>{len(snap.accepted_tokens)}</b> tokens: <code>{html.escape(accepted)}</code>
(the accepted path, then the target's own token).</p>
<div class="svg">{svg}</div>
<table><tr><th>node</th><th>parent</th><th>token</th><th>id</th><th>draft probability of the path</th></tr>
{rows}
</table></body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
