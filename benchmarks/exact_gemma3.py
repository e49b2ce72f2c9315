"""Greedy exactness on a real sliding-window model, past its window: Gemma-3-270m.

Every method (SpecExec at budgets 1, 16 and 128, SpecInfer, chain, autoregressive), with the
target as its own draft and with a truncated copy of its first 6 layers, against transformers'
greedy ``generate``, on long wikitext and c4 prompts (520 tokens: the 512-position window of
five in six layers is already full when generation starts). Prints one row per run.

    .venv/bin/python benchmarks/exact_gemma3.py [--prompts 2] [--max-new-tokens 40]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import greedy_reference, top2_gap  # noqa: E402

from specexec import SpecExecEngine  # noqa: E402
from specexec.models import load_model, truncated_copy  # noqa: E402

RUNS = [
    ("self", "specexec", dict(max_budget=1, max_beam_len=8)),
    ("self", "specexec", dict(max_budget=16, max_beam_len=8)),
    ("self", "specexec", dict(max_budget=128, max_beam_len=8)),
    ("self", "specinfer", dict(max_n_beams=4, max_beam_len=6)),
    ("self", "chain", dict(max_beam_len=8)),
    ("truncated:6", "specexec", dict(max_budget=16, max_beam_len=8)),
    ("truncated:6", "chain", dict(max_beam_len=4)),
    ("none", "autoregressive", {}),
]


def long_prompts(tokenizer, count: int, length: int) -> list[tuple[str, list[int]]]:
    datasets = ROOT.parent / "shared" / "datasets"
    out = []
    for name in ("wikitext", "c4"):
        items = json.loads((datasets / f"{name}_prompts.json").read_text())
        ids = tokenizer(" ".join(t for _, t in items[:12]))["input_ids"][:length]
        out.append((name, ids))
    return out[:count]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=520)
    p.add_argument("--max-new-tokens", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    loaded = load_model("gemma3-270m", dtype="float32")
    target, tok = loaded.model, loaded.tokenizer
    drafts = {"self": target, "truncated:6": truncated_copy(target, 6), "none": None}
    engines = {k: SpecExecEngine(target, tok, d) for k, d in drafts.items()}
    print(f"# Gemma-3-270m, float32, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}; window {engines['none'].target_runner.layout.window}")
    print("| prompt | draft | method | settings | equal to generate | tokens per pass | seconds |")
    print("|---|---|---|---|---|---:|---:|")
    for name, ids in long_prompts(tok, args.prompts, args.prompt_tokens):
        want = greedy_reference(target, ids, args.max_new_tokens, engines["none"].eos_ids)
        for draft, method, settings in RUNS:
            t = time.perf_counter()
            got = engines[draft].generate(ids, method=method, max_new_tokens=args.max_new_tokens, **settings)
            seconds = time.perf_counter() - t
            if got.token_ids == want:
                verdict = "yes"
            else:
                i = next((k for k, (a, b) in enumerate(zip(got.token_ids, want)) if a != b), None)
                gap = top2_gap(target, ids + want[:i]) if i is not None else float("nan")
                verdict = f"NO: token {i}, top-2 gap {gap:.2g}"
            label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"
            print(f"| {name} ({len(ids)} tokens) | {draft} | {method} | {label} | {verdict} | "
                  f"{got.stats.tokens_per_pass:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
