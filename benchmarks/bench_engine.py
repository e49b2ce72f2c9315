"""Engine benchmark: every decoding method on the same prompts, in one process.

SmolLM2-135M-Instruct target (the embedded default), greedy, oasst prompts with the
target's chat template. Rows: SpecExec at several budgets, SpecInfer, chain, the
engine's autoregressive decoding, and transformers' own ``generate`` on the target as
the reference baseline. Columns: tokens/s, speedup over ``generate``, tokens per target
pass, and the share of decoding time spent outside the two models' forward passes
(tree bookkeeping, sampling, cache commits).

    python benchmarks/bench_engine.py [--draft truncated:4] [--prompts 10] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="embedded")
    ap.add_argument("--draft", default=None, help="default: the target's default draft")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--budgets", default="16,64,256,1024")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from specexec import SpecExecEngine
    from specexec.experiments.datasets import prepare, resolve
    from specexec.experiments.loop import _hardware as hardware
    from specexec.models import default_draft, load_model

    target = load_model(args.target, device=args.device)
    draft_model, draft_tok = default_draft(args.draft, target, device=args.device)
    engine = SpecExecEngine(target.model, target.tokenizer, draft_model, draft_tokenizer=draft_tok)
    has_template = bool(getattr(target.tokenizer, "chat_template", None))
    prompts = []
    for p in resolve("oasst").prompts[: args.prompts]:
        text, chat = prepare(p, "auto", has_template)
        prompts.append(engine.encode(text, chat=chat))

    rows = []

    def run(label, **kw):
        engine.generate(prompts[0], max_new_tokens=4, **kw)  # warm-up
        tokens = passes = 0
        seconds = overhead_seconds = 0.0
        for ids in prompts:
            res = engine.generate(ids, max_new_tokens=args.max_new_tokens, temperature=0.0, **kw)
            s = res.stats
            tokens += s.new_tokens
            passes += s.target_passes
            seconds += s.seconds
            overhead_seconds += s.seconds - s.draft_forward_seconds - s.target_forward_seconds
        rows.append(dict(method=label, tokens=tokens, seconds=seconds, tok_s=tokens / seconds,
                         per_pass=tokens / passes, overhead=overhead_seconds / seconds))
        print(f"  {label:<24} {tokens / seconds:7.2f} tok/s  {tokens / passes:5.2f} tok/pass", flush=True)

    # transformers' generate on the target: the reference baseline
    eos = sorted(engine.eos_ids) or None
    with torch.no_grad():
        target.model.generate(torch.tensor([prompts[0]], device=args.device), max_new_tokens=4, do_sample=False)
        tokens, seconds = 0, 0.0
        for ids in prompts:
            x = torch.tensor([ids], device=args.device)
            start = time.perf_counter()
            out = target.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.max_new_tokens,
                                        do_sample=False, eos_token_id=eos, pad_token_id=eos[0] if eos else None)
            seconds += time.perf_counter() - start
            tokens += out.shape[1] - len(ids)
    rows.append(dict(method="transformers generate", tokens=tokens, seconds=seconds, tok_s=tokens / seconds,
                     per_pass=1.0, overhead=float("nan")))
    print(f"  {'transformers generate':<24} {tokens / seconds:7.2f} tok/s", flush=True)

    run("autoregressive", method="autoregressive")
    for b in [int(x) for x in args.budgets.split(",")]:
        run(f"specexec budget {b}", method="specexec", max_budget=b, max_n_beams=16, max_branch_width=16,
            max_beam_len=16)
    run("specinfer 8x8", method="specinfer", max_n_beams=8, max_beam_len=8)
    run("chain 8", method="chain", max_beam_len=8)

    base = rows[0]["tok_s"]
    print()
    print(f"Machine: {hardware(args.device)}, torch {torch.__version__}")
    print(f"Target {args.target}, draft {args.draft or 'default'}, greedy, {len(prompts)} oasst prompts "
          f"(chat template), {args.max_new_tokens} new tokens")
    print()
    print("| method | tokens/s | speedup vs generate | tokens per target pass | time outside forward passes |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        share = "n/a" if r["overhead"] != r["overhead"] else f"{100 * r['overhead']:.1f}%"
        print(f"| {r['method']} | {r['tok_s']:.2f} | {r['tok_s'] / base:.2f}x | {r['per_pass']:.2f} | {share} |")


if __name__ == "__main__":
    main()
