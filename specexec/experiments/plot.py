"""``specexec plot EXP_DIR``: gen_rate and gen_speed against the draft budget, one line per method.

The x axis is the budget in draft tokens per tree: ``budget`` for SpecExec, ``beams x max_h`` for
SpecInfer, ``max_h`` for a chain. The autoregressive baseline is a horizontal line.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError

HELP = "draw gen_rate and gen_speed against budget per method from an experiment's folder"
NAMES = {"specexec": "SpecExec", "specinfer": "SpecInfer", "chain": "chain", "autoregressive": "autoregressive"}


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def x_of(row: dict) -> float | None:
    method = row.get("method")
    if method == "specexec":
        return _num(row.get("budget"))
    if method == "specinfer":
        b, h = _num(row.get("beams")), _num(row.get("max_h"))
        return b * h if b and h else None
    if method == "chain":
        return _num(row.get("max_h"))
    return None


KNOBS = ("beams", "max_h", "budget", "minLP", "branch")
ON_X = {"specexec": ("budget",), "specinfer": ("max_h",), "chain": ("max_h",)}


def _lines(method: str, rows: list[dict]) -> dict[str, list[dict]]:
    """One line per value of the knobs that vary but are not on the x axis (e.g. SpecInfer's beams)."""
    varying = [k for k in KNOBS if k not in ON_X.get(method, ()) and len({str(r.get(k)) for r in rows}) > 1]
    out: dict[str, list[dict]] = {}
    for r in rows:
        tag = "".join(f" {k}={r.get(k):g}" if _num(r.get(k)) is not None else f" {k}=-" for k in varying)
        out.setdefault(tag, []).append(r)
    return out


def plot_rows(rows: list[dict], path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "gen_rate", "gen_rate (tokens per target pass)"),
                              (axes[1], "gen_speed", "gen_speed (tokens/s)")):
        methods = [m for m in dict.fromkeys(r.get("method") for r in rows)]
        for method in methods:
            mine = [r for r in rows if r.get("method") == method and _num(r.get(metric)) is not None]
            if method == "autoregressive":
                for r in mine:
                    ax.axhline(_num(r[metric]), color="grey", linestyle="--", label=NAMES[method])
                continue
            for r in mine:  # auto budgets have no x: a level, as the baseline
                if str(r.get("budget")) == "auto":
                    ax.axhline(_num(r[metric]), color="tab:green", linestyle=":", label=f"{NAMES[method]} auto")
            mine = [r for r in mine if str(r.get("budget")) != "auto"]
            for tag, group in _lines(method, mine).items():
                pts = sorted((x_of(r), _num(r[metric])) for r in group if x_of(r) is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            label=f"{NAMES.get(method, method)}{tag}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("budget (draft tokens per tree)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_acceptance(rows: list[dict], path, title: str = "") -> Path | None:
    """Acceptance by depth: per configuration, the share of passes that accepted >= k draft tokens."""
    rows = [r for r in rows if r.get("method") != "autoregressive" and r.get("reach")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        reach = list(r["reach"])
        ax.plot(range(1, len(reach) + 1), reach, marker="o", markersize=3, label=r.get("config") or r.get("method"))
    ax.set_xlabel("depth k (draft tokens accepted in one pass)")
    ax.set_ylabel("share of target passes accepting >= k")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Lay out, write as PNG and free a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rows_of(exp_dir) -> list[dict]:
    """The summary rows of an experiment folder (summary.csv, else the JSONL's summary records)."""
    exp_dir = Path(exp_dir)
    csv = exp_dir / "summary.csv"
    if csv.is_file():
        import pandas as pd

        return pd.read_csv(csv).to_dict("records")
    jsonl = exp_dir / "results.jsonl"
    if jsonl.is_file():
        from .report import read_jsonl

        rows = [r for r in read_jsonl(jsonl) if r.get("msg_type") == "summary"]
        if rows:
            return rows
    raise ConfigError(f"{exp_dir}: no summary.csv or summary records in results.jsonl (is it an experiment folder?)")


def add_arguments(p) -> None:
    p.add_argument("exp_dir", help="an experiment's folder (SAVE_DIR/EXP_NAME)")
    p.add_argument("-o", "--output", default=None, help="PNG file to write (default: EXP_DIR/plot.png)")


def run(args) -> int:
    rows = rows_of(args.exp_dir)
    out = plot_rows(rows, args.output or Path(args.exp_dir) / "plot.png", title=Path(args.exp_dir).name)
    print(out)
    return 0
