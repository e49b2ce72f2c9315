"""``specexec profile``: what a forward pass costs here, against the tokens it scores.

Measures (or reads from the user cache) the cost profile that ``--budget auto`` decides
with, for the given target, draft, dtype, device and offload mode, prints it as a table and
draws it as a plot.
"""

from __future__ import annotations

import argparse
import sys

from .generate import add_model_arguments, add_offload_arguments

HELP = "measure and show forward-pass cost against tokens per pass (what --budget auto decides with)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_offload_arguments(p)
    p.add_argument("--refresh", action="store_true", help="measure again even if a cached profile exists")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the profile into this PNG file")


def format_profile(profile) -> str:
    rows = profile.table()
    lines = [f"{'tokens':>7} {'target s':>10} {'x 1 token':>10} {'draft s':>10} {'x 1 token':>10}"]
    for r in rows:
        def cell(v, fmt):
            return f"{v:{fmt}}" if v is not None else "-"
        lines.append(f"{r['tokens']:>7} {cell(r['target_s'], '10.4f'):>10} {cell(r['target_x'], '10.2f'):>10} "
                     f"{cell(r['draft_s'], '10.4f'):>10} {cell(r['draft_x'], '10.2f'):>10}")
    return "\n".join(lines)


def plot_profile(profile, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..experiments.plot import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in (("target", profile.target), ("draft", profile.draft)):
        if points:
            ax.plot(list(points), list(points.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per forward pass")
    ax.set_ylabel("seconds per forward pass")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def run(args) -> int:
    from ..budget import load_or_measure
    from ..engine import SpecExecEngine
    from ..models import cache_dir, parse_device, parse_draft, parse_dtype

    parse_dtype(args.dtype)
    if args.offload:
        from ..offload import OffloadOptions

        OffloadOptions(args.offload, args.device_size, args.keep_layers).compute_device(args.device)
    parse_device(args.device)
    parse_draft(args.draft)
    engine = SpecExecEngine.from_pretrained(args.target, args.draft, dtype=args.dtype, device=args.device,
                                            offload=args.offload, device_size=args.device_size,
                                            keep_layers=args.keep_layers, draft_vocab=args.draft_vocab,
                                            draft_dtype=args.draft_dtype,
                                            quantize=args.quantize, draft_quantize=args.draft_quantize)
    print("measuring forward passes (a few seconds)..." if args.refresh else "reading or measuring the cost profile...",
          file=sys.stderr)
    profile, path, measured = load_or_measure(engine.target_runner, engine.draft_runner, cache_root=cache_dir(),
                                              context_limit=engine.max_context, refresh=args.refresh)
    where = f"offload {args.offload}" if args.offload else "resident"
    print(f"cost profile: target {args.target}, draft {args.draft or 'default'}, {args.dtype} on {engine.device}, {where}")
    print(format_profile(profile))
    print(f"{'measured now' if measured else 'from the cache'}: {path}")
    if args.plot:
        plot_profile(profile, args.plot, title=f"{args.target} ({args.dtype}, {engine.device}, {where})")
        print(f"plot: {args.plot}")
    return 0
