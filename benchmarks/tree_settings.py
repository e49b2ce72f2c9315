"""Which tree settings suit a draft? SpecExec greedy tokens per target pass, setting by setting.

For the embedded SmolLM2-135M-Instruct target with the shipped draft (or another shipped-format
draft folder), on oasst prompts 0..N-1 with the chat template: every setting runs every prompt,
and the table gives tokens per target pass, draft passes per target pass and seconds. Greedy
outputs must be the same under every setting (they are the target's own): the script checks it.

    python benchmarks/tree_settings.py --budgets 64 --prompts 5 \\
        --settings "default" "draft_temperature=0.5" "max_n_beams=4,max_beam_len=32"

A setting is ``default`` or comma-separated ``name=value`` fields of ``GenerationConfig``
(max_n_beams, max_beam_len, max_branch_width, draft_temperature, decay, min_log_prob).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from draft_quality import oasst_prompts, table  # noqa: E402

from specexec import SpecExecEngine  # noqa: E402
from specexec.distill.shipped import SHIPPED_DIR, load_shipped_draft  # noqa: E402
from specexec.models import load_model  # noqa: E402

FIELDS = {"max_n_beams": int, "max_beam_len": int, "max_branch_width": int, "draft_temperature": float,
          "decay": float, "min_log_prob": float}


def parse_setting(text: str) -> dict:
    if text == "default":
        return {}
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name not in FIELDS:
            raise SystemExit(f"bad setting {text!r}: use default or name=value,... with names {', '.join(FIELDS)}")
        out[name] = FIELDS[name](value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="64")
    ap.add_argument("--prompts", type=int, default=5, help="oasst prompts 0..N-1")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--settings", nargs="+", default=["default"])
    ap.add_argument("--shipped-dir", type=Path, default=SHIPPED_DIR,
                    help="a shipped-format draft folder (default: the package's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = [(s, parse_setting(s)) for s in args.settings]
    loaded = load_model("embedded", dtype="float32")
    target, tok = loaded.model, loaded.tokenizer
    draft = load_shipped_draft(target, args.shipped_dir)
    engine = SpecExecEngine(target, tok, draft, draft_tokenizer=tok)
    prompts = oasst_prompts(args.prompts)
    rows, reference = [], {}
    for budget in [int(b) for b in args.budgets.split(",")]:
        for name, fields in settings:
            tokens = passes = draft_passes = 0
            t0 = time.perf_counter()
            for i, p in enumerate(prompts):
                r = engine.generate(p, chat=True, method="specexec", max_new_tokens=args.tokens, max_budget=budget,
                                    temperature=0.0, **fields)
                ref = reference.setdefault(i, r.token_ids)
                if r.token_ids != ref:
                    raise SystemExit(f"prompt {i}: output under {name!r} at budget {budget} differs from the first run")
                tokens += r.stats.new_tokens
                passes += r.stats.target_passes
                draft_passes += r.stats.draft_passes
            seconds = time.perf_counter() - t0
            rows.append([budget, name, f"{tokens / passes:.2f}", f"{draft_passes / passes:.1f}", f"{seconds:.0f}"])
            print(f"  budget {budget} {name}: {tokens / passes:.2f} tokens/pass, {seconds:.0f} s", flush=True)
    head = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads. SpecExec greedy, {args.tokens} new tokens, "
            f"oasst prompts 0-{args.prompts - 1}, draft with {draft.config.num_hidden_layers} layers.")
    print(head)
    out = head + "\n" + table("Tokens per target pass by tree setting",
                              ["budget", "setting", "tokens/pass", "draft passes/target pass", "seconds"], rows)
    if args.out:
        Path(args.out).write_text(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
