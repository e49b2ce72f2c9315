"""``max_budget="auto"`` against every fixed budget and against autoregressive decoding.

The embedded pair (SmolLM2-135M-Instruct and its shipped draft), greedy, oasst prompts in
the chat template: autoregressive, SpecExec at each fixed budget, and SpecExec with
``auto``, one process, same prompts, warm-up excluded; every row's tokens are checked against
the autoregressive row's. ``--regime ram``: the target resident; ``--regime disk``: its
decoder layers streamed from disk each pass (``offload="disk"``). The cost profile ``auto``
decides with is measured first (or read from the cache) and printed. ``--interleave`` runs
every configuration on a prompt before the next prompt (the autoregressive row first, whose
tokens the others are checked against), so that a machine whose speed drifts during the run
slows every row alike.

    python benchmarks/budget.py [--regime ram|disk] [--prompts 10] [--max-new-tokens 128]
                                [--budgets 8,16,32,64,128,256,512,1024] [--interleave]
"""

from __future__ import annotations

import argparse
from collections import Counter

from common import GreedyRuns, machine, oasst_prompts

from specexec.drafts import DRAFT_DTYPES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", choices=("ram", "disk"), default="ram")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--budgets", default="8,16,32,64,128,256,512,1024")
    ap.add_argument("--max-beam-len", type=int, default=16, help="depth cap of the fixed budgets, and auto's largest")
    ap.add_argument("--refresh-profile", action="store_true", help="measure the cost profile again")
    ap.add_argument("--draft-dtype", default="auto", choices=DRAFT_DTYPES,
                    help="the draft's dtype (default: the engine's choice)")
    ap.add_argument("--interleave", action="store_true", help="every configuration on a prompt before the next")
    args = ap.parse_args()

    from specexec import SpecExecEngine
    from specexec.commands.profile import format_profile

    print(f"machine: {machine()}", flush=True)
    offload = "disk" if args.regime == "disk" else None
    engine = SpecExecEngine.from_pretrained("embedded", offload=offload, draft_dtype=args.draft_dtype)
    print(f"draft in {next(engine.draft.parameters()).dtype}", flush=True)
    profile = engine.cost_profile(refresh=args.refresh_profile)
    print(f"cost profile ({args.regime}):\n{format_profile(profile)}", flush=True)
    prompts = oasst_prompts(engine, args.prompts)
    print(f"{len(prompts)} oasst prompts, {args.max_new_tokens} new tokens, greedy, target "
          f"{'streamed from disk' if offload else 'in RAM'}", flush=True)
    runs = GreedyRuns(engine, prompts, args.max_new_tokens)
    tree = dict(method="specexec", max_n_beams=16, max_branch_width=16, max_beam_len=args.max_beam_len)
    configs = [("autoregressive", dict(method="autoregressive"))]
    for b in [int(x) for x in args.budgets.split(",") if x.strip()]:  # --budgets "": autoregressive and auto only
        configs.append((f"SpecExec budget {b}", dict(max_budget=b, **tree)))
    configs.append(("SpecExec auto", dict(max_budget="auto", **tree)))
    auto = runs.run_all(configs, interleave=args.interleave)[-1]

    base = runs.rows[0].tokens_per_second
    fixed = [r for r in runs.rows[1:] if r is not auto]
    best = max(fixed, key=lambda r: r.tokens_per_second) if fixed else None
    print(f"\n| method (target {'streamed from disk' if offload else 'in RAM'}) | tokens/s | vs autoregressive | "
          "tokens per target pass | seconds per iteration | same tokens |")
    print("|---|---:|---:|---:|---:|---|")
    for r in runs.rows:
        print(f"| {r.label} | {r.tokens_per_second:.2f} | {r.tokens_per_second / base:.2f}x | {r.tokens_per_pass:.2f} | "
              f"{r.seconds_per_pass:.3f} | {'yes' if r.same else 'NO'} |")
    counts = Counter(auto.budgets)
    shares = ", ".join(f"{'no tree' if b == 0 else b}: {100 * n / len(auto.budgets):.0f}%"
                       for b, n in counts.most_common(5))
    print(f"\nauto chose (share of passes): {shares}")
    if best is not None:
        print(f"auto / best fixed budget ({best.label}): {auto.tokens_per_second / best.tokens_per_second:.2f}x")
    print(f"auto / autoregressive: {auto.tokens_per_second / base:.2f}x")


if __name__ == "__main__":
    main()
