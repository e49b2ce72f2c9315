"""The reduced draft head: the shipped draft with its full 49,152-token head against K-token heads.

1. Cost: one forward pass of each draft and of the target at 1 and 64 new tokens on a 256-token
   cache (best of 3 medians of 9, all models interleaved).
2. Misses: the share of the autoregressive run's tokens outside each head's subset, and outside
   the subset and the sequence so far (prompt and earlier answer tokens, which a reduced head also
   scores); the most sequence tokens one prompt added to a head.
3. End to end: the embedded target in RAM, greedy, oasst prompts in the chat template:
   autoregressive, then SpecExec at each budget with each head: tokens/s, tokens per target pass,
   drafting time per pass; every row's tokens checked against the autoregressive row's.

A head ``K:subset`` scores its K tokens only (``SubsetHead.follow_context = False``), for comparison.

The heads' tokens come from the ranking stored with the shipped draft (``--ranking DIR`` reads
``draft_vocab.json`` from another folder, e.g. a ``specexec distill --draft-vocab`` output).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/draft_vocab.py [--prompts 10] [--max-new-tokens 128]
        [--budgets 16,64] [--heads full,8192,8192:subset,4096] [--ranking DIR] [--skip-e2e]

``--skip-e2e`` stops after the cost table (the autoregressive run, which the misses need, still runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import GreedyRuns, machine, oasst_prompts
from draft_quality import forward_cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--budgets", default="16,64")
    ap.add_argument("--heads", default="full,8192,8192:subset,4096")
    ap.add_argument("--ranking", default=None, help="folder holding draft_vocab.json (default: the shipped draft's)")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()

    from specexec import SpecExecEngine
    from specexec.distill.shipped import SHIPPED_DIR, load_shipped_draft
    from specexec.draft_vocab import apply_draft_vocab, head_tokens, parse_draft_vocab, read_vocab
    from specexec.models import eos_token_ids, load_model

    print(f"machine: {machine()}", flush=True)
    loaded = load_model("embedded")
    target, tokenizer = loaded.model, loaded.tokenizer
    folder = Path(args.ranking) if args.ranking else SHIPPED_DIR
    info = read_vocab(folder)
    if info is None:
        raise SystemExit(f"no draft_vocab.json in {folder}")
    print(f"ranking: {folder} ({len(info['ranking'])} tokens seen; {info['source']})", flush=True)
    eos = eos_token_ids(target, tokenizer)
    drafts, subsets = {}, {}
    for h in args.heads.split(","):
        spec, _, mode = h.strip().partition(":")
        k = parse_draft_vocab(spec)
        draft = apply_draft_vocab(load_shipped_draft(target), folder, k if k == "full" else int(k), eos)
        head = draft.get_output_embeddings()
        name = f"head {head_tokens(draft)}" if k == "full" else f"head {k}" + (", subset only" if mode else "")
        if k != "full":
            head.follow_context = not mode
            subsets[name] = set(head.token_ids.tolist())
        drafts[name] = draft

    engine = SpecExecEngine(target, tokenizer, None)
    prompts = oasst_prompts(engine, args.prompts)
    print(f"\n{len(prompts)} oasst prompts, {args.max_new_tokens} new tokens, greedy, target in RAM", flush=True)
    runs = GreedyRuns(engine, prompts, args.max_new_tokens)
    runs.run("autoregressive", method="autoregressive")

    print("\n| head | target tokens outside the subset | outside the subset and the sequence so far | "
          "sequence tokens added (mean, most) |\n|---|---:|---:|---:|")
    widest = {}
    for name, subset in subsets.items():
        if not drafts[name].get_output_embeddings().follow_context:
            continue  # the same subset as its K's row
        outside = outside_seq = 0
        added = []
        for i, ids in enumerate(prompts):
            seen, extra = set(ids), set(ids) - subset
            for t in runs.reference[i]:
                outside += t not in subset
                outside_seq += t not in subset and t not in seen
                seen.add(t)
                if t not in subset:
                    extra.add(t)
            added.append(len(extra))
        n = sum(len(r) for r in runs.reference.values())
        widest[name] = max(range(len(prompts)), key=lambda i: added[i])
        print(f"| {name} | {100 * outside / n:.1f}% | {100 * outside_seq / n:.1f}% | "
              f"{sum(added) / len(added):.0f}, {max(added)} |", flush=True)

    print("\n| new tokens | model | ms per pass | share of the target's pass |\n|---:|---|---:|---:|")
    for n in (1, 64):
        models = {"target": target} | drafts
        for name in subsets:  # the head as wide as the prompt that widened it most made it
            if drafts[name].get_output_embeddings().follow_context:
                i = widest[name]
                models[f"{name} + {len(set(prompts[i] + runs.reference[i]) - subsets[name])} sequence tokens"] = \
                    (drafts[name], prompts[i] + runs.reference[i])
        times = {name: [] for name in models}
        for _ in range(3):  # interleaved, so that a load change hits every model alike
            for name, m in models.items():
                model, context = m if isinstance(m, tuple) else (m, [])
                head = model.get_output_embeddings()
                if context:
                    head.add_context(context)
                times[name].append(forward_cost(model, n))
                if context:
                    head.reset_context()
        tt = min(times["target"])
        for name, ts in times.items():
            print(f"| {n} | {'target' if name == 'target' else 'draft, ' + name} | {min(ts) * 1e3:.1f} | "
                  f"{100 * min(ts) / tt:.1f}% |", flush=True)
    if args.skip_e2e:
        return

    budgets = [int(b) for b in args.budgets.split(",")]
    tree = dict(method="specexec", max_n_beams=16, max_branch_width=16, max_beam_len=16)
    for name, draft in drafts.items():
        runs.engine = SpecExecEngine(target, tokenizer, draft, draft_tokenizer=tokenizer)
        for b in budgets:
            runs.run(f"budget {b}, {name}", max_budget=b, **tree)
    base = runs.rows[0].tokens_per_second
    full = {b: next(r for r in runs.rows if r.label == f"budget {b}, {next(iter(drafts))}") for b in budgets}
    print(f"\n| configuration | tokens/s | vs autoregressive | tokens per pass | vs {next(iter(drafts))} | "
          "drafting s per pass | same tokens |\n|---|---:|---:|---:|---:|---:|---|")
    for r in runs.rows:
        ref = next((full[b] for b in budgets if r.label.startswith(f"budget {b},")), None)
        rel = f"{100 * (r.tokens_per_pass / ref.tokens_per_pass - 1):+.1f}%" if ref else ""
        print(f"| {r.label} | {r.tokens_per_second:.2f} | {r.tokens_per_second / base:.2f}x | {r.tokens_per_pass:.2f} | "
              f"{rel} | {r.draft_seconds_per_pass:.3f} | {'yes' if r.same else 'NO'} |")
    print(json.dumps({"machine": machine(), "rows": [r.__dict__ | {"budgets": None} for r in runs.rows]}))


if __name__ == "__main__":
    main()
