"""``specexec viz``: draw the tree of one target pass of a generation (PNG and a standalone HTML page)."""

from __future__ import annotations

import argparse
import sys

from .generate import add_decoding_arguments, add_model_arguments, config_from_args

HELP = "draw one iteration's token tree: tokens, draft probabilities, the accepted path (PNG / HTML)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the prompt text ('-' reads standard input)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the target's chat template")
    p.add_argument("--iteration", type=int, default=0, help="which target pass to draw (0 = the first; default 0)")
    p.add_argument("--out", default="tree.png", help="PNG file to write (default tree.png)")
    p.add_argument("--html", default=None, metavar="FILE", help="also write a standalone HTML page")
    add_model_arguments(p)
    add_decoding_arguments(p)
    p.set_defaults(budget=32, max_new_tokens=32)  # a tree small enough to read


def run(args) -> int:
    from ..engine import SpecExecEngine
    from ..errors import ConfigError, PromptError
    from ..models import parse_device, parse_draft, parse_dtype
    from ..viz import TreeSnapshot, draw_png, write_html

    cfg = config_from_args(args)
    if cfg.method == "autoregressive":
        raise ConfigError("--method autoregressive drafts no tree to draw")
    if args.iteration < 0:
        raise ConfigError(f"--iteration must be >= 0, got {args.iteration}")
    parse_dtype(args.dtype)
    parse_device(args.device)
    parse_draft(args.draft)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise PromptError("the prompt is empty")
    engine = SpecExecEngine.from_pretrained(args.target, args.draft, dtype=args.dtype, device=args.device, config=cfg,
                                            draft_vocab=args.draft_vocab, draft_dtype=args.draft_dtype,
                                            quantize=args.quantize, draft_quantize=args.draft_quantize)
    snap = TreeSnapshot(at=args.iteration)
    engine.tree_watchers.append(snap)
    result = engine.generate(prompt, chat=args.chat)
    if not snap.taken:
        raise ConfigError(f"the generation took {result.stats.target_passes} target passes: there is no pass "
                          f"{args.iteration} to draw (passes count from 0)")
    decode = (lambda ids: engine.tokenizer.decode(ids)) if engine.tokenizer is not None else None
    title = f"{args.target}: target pass {args.iteration} ({cfg.method}, budget {result.stats.budgets[args.iteration] if result.stats.budgets else '-'})"
    print(draw_png(snap, args.out, decode, title))
    if args.html:
        print(write_html(snap, args.html, decode, title, context=f"prompt: {prompt}"))
    print(f"pass {args.iteration}: {len(snap.tokens) - 1} draft tokens, {len(snap.path) - 1} accepted, then the "
          f"target's own token", file=sys.stderr)
    return 0
