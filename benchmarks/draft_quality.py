"""How good is the draft? Figures for the embedded SmolLM2-135M-Instruct target, chat template.

1. Agreement: on the target's own greedy continuations of oasst prompts 0-99, how often the
   target's greedy token is the draft's top-1 / in its top-4 / in its top-16.
2. SpecExec greedy tokens per target pass at several budgets, for the shipped distilled draft,
   the untrained truncated copy, and draft = target.
3. Cost: one draft forward vs one target forward, at 1 and 64 new tokens on a 256-token context.
4. End to end, greedy: SpecExec with the shipped draft at its best budget vs the target's
   autoregressive decoding in the same engine vs transformers' ``generate`` on the target.

Run from the repository root:  python benchmarks/draft_quality.py [--quick]
Prompts come from ../shared/datasets (or $SPECEXEC_DATASETS); only evaluation prompts 0-99.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from specexec import SpecExecEngine
from specexec.distill.data import strip_llama2_template
from specexec.distill.dataset import encode_prompt
from specexec.distill.shipped import SHIPPED_DIR, load_shipped_draft
from specexec.distill.teacher import generate_examples
from specexec.models import load_model, truncated_copy

DATASETS = Path(os.environ.get("SPECEXEC_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def oasst_prompts(n: int) -> list[str]:
    items = json.loads((DATASETS / "oasst_prompts.json").read_text())
    return [strip_llama2_template(t) for i, t in items if int(i) < min(n, 100)]


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[c if isinstance(c, str) else f"{c:.3g}" if isinstance(c, float) else str(c) for c in r]
                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [f"\n### {title}\n", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    print(text, flush=True)
    return text


@torch.no_grad()
def agreement(target, tokenizer, drafts: dict, prompts: list[str], new_tokens: int, batch: int) -> list[list]:
    """Teacher-forced agreement on the target's greedy continuations (its top-1 recorded while generating)."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    examples = []
    for i in range(0, len(encoded), batch):
        examples += generate_examples(target, encoded[i:i + batch], max_new_tokens=new_tokens, temperature=0.0, k=1,
                                      eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id or 0,
                                      generator=torch.Generator().manual_seed(0))
    rows = []
    for name, draft in drafts.items():
        hits = {1: 0, 4: 0, 16: 0}
        total = 0
        for e in examples:
            logits = draft(e.ids[None].long()).logits[0, e.first - 1:-1].float()
            want = e.top_ids[:, 0].long()
            rank = (logits > logits.gather(1, want[:, None])).sum(1)
            for k in hits:
                hits[k] += int((rank < k).sum())
            total += len(want)
        rows.append([name] + [f"{100 * hits[k] / total:.1f}%" for k in hits] + [total])
    return rows


def tokens_per_pass(target, tokenizer, drafts: dict, prompts: list[str], budgets: list[int], new_tokens: int,
                    baseline_prompts: int, big_prompts: int) -> list[list]:
    """Mean new tokens per target pass; budgets above 256 on the first ``big_prompts`` prompts only,
    drafts other than the first (the baselines) on the first ``baseline_prompts``."""
    rows = []
    shipped_name = next(iter(drafts))
    for name, draft in drafts.items():
        engine = SpecExecEngine(target, tokenizer, draft, draft_tokenizer=tokenizer)
        row = [name]
        for b in budgets:
            use = prompts[:baseline_prompts] if name != shipped_name else prompts
            use = use[:big_prompts] if b > 256 else use
            tok = passes = 0
            for p in use:
                r = engine.generate(p, chat=True, method="specexec", max_new_tokens=new_tokens, max_budget=b,
                                    temperature=0.0)
                tok += r.stats.new_tokens
                passes += r.stats.target_passes
            row.append(f"{tok / passes:.2f} ({len(use)})")
            print(f"  {name} budget {b}: {tok / passes:.2f} tokens/pass on {len(use)} prompts", flush=True)
        rows.append(row)
    return rows


@torch.no_grad()
def forward_cost(model, n_new: int, context: int = 256, reps: int = 9) -> float:
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    cache = DynamicCache()
    model(torch.randint(0, vocab, (1, context), generator=gen), past_key_values=cache, use_cache=True)
    times = []
    for _ in range(reps):
        x = torch.randint(0, vocab, (1, n_new), generator=gen)
        t = time.perf_counter()
        model(x, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - t)
        cache.crop(-n_new)
    return statistics.median(times)


def cost_rows(target, drafts: dict) -> list[list]:
    rows = []
    for n in (1, 64):
        # interleave so that a load change on the machine hits both models alike
        t_target, t_draft = [], {name: [] for name in drafts}
        for _ in range(3):
            t_target.append(forward_cost(target, n))
            for name, d in drafts.items():
                t_draft[name].append(forward_cost(d, n))
        tt = min(t_target)
        for name in drafts:
            td = min(t_draft[name])
            rows.append([n, name, f"{td * 1e3:.1f}", f"{tt * 1e3:.1f}", f"{100 * td / tt:.1f}%"])
    return rows


@torch.no_grad()
def end_to_end(target, tokenizer, draft, prompts: list[str], budgets: list[int], new_tokens: int):
    """SpecExec at each budget, the same engine without a draft, and transformers' generate, prompt by prompt."""
    engine = SpecExecEngine(target, tokenizer, draft, draft_tokenizer=tokenizer)
    runs = [("specexec", b) for b in budgets] + [("autoregressive", 0)]
    agg = {r: [0, 0.0, 0.0, 0.0, 0] for r in runs}  # tokens, seconds, draft fwd s, target fwd s, target passes
    hf_tok, hf_sec, mismatches = 0, 0.0, 0
    for p in prompts:
        outs = {}
        for method, b in runs:
            r = engine.generate(p, chat=True, method=method, max_new_tokens=new_tokens, max_budget=b or 1,
                                temperature=0.0)
            a, st = agg[(method, b)], r.stats
            a[0] += st.new_tokens
            a[1] += st.seconds
            a[2] += st.draft_forward_seconds
            a[3] += st.target_forward_seconds
            a[4] += st.target_passes
            outs[(method, b)] = r.token_ids
        mismatches += sum(o != outs[("autoregressive", 0)] for o in outs.values())
        ids = torch.tensor([encode_prompt(tokenizer, p)])
        t = time.perf_counter()
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        hf_sec += time.perf_counter() - t
        hf_tok += out.shape[1] - ids.shape[1]
    ar = agg[("autoregressive", 0)]
    ar_speed = ar[0] / ar[1]
    best = max(budgets, key=lambda b: agg[("specexec", b)][0] / agg[("specexec", b)][1])
    rows, split = [], []
    for (method, b), a in agg.items():
        label = f"SpecExec, shipped draft, budget {b}" + (" (best)" if b == best else "") if method == "specexec" \
            else "target alone, same engine (autoregressive)"
        rows.append([label, a[0], a[1], a[0] / a[1], a[0] / a[1] / ar_speed])
        split.append([label, a[4], a[0] / a[4], a[1], a[2], a[3], a[1] - a[2] - a[3]])
    rows.append(["transformers generate, target", hf_tok, hf_sec, hf_tok / hf_sec, hf_tok / hf_sec / ar_speed])
    print(f"outputs differing from the autoregressive decoding: {mismatches}", flush=True)
    return rows, split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agree-prompts", type=int, default=100)
    ap.add_argument("--agree-tokens", type=int, default=128)
    ap.add_argument("--pass-prompts", type=int, default=20, help="prompts for tokens per pass (first N of 0-99)")
    ap.add_argument("--big-prompts", type=int, default=3, help="prompts for budgets above 256 (slow on a CPU)")
    ap.add_argument("--baseline-prompts", type=int, default=2,
                    help="prompts for the truncated copy and draft = target (slow on a CPU)")
    ap.add_argument("--pass-tokens", type=int, default=64)
    ap.add_argument("--pass-drafts", default="shipped,truncated,self", help="rows of the tokens-per-pass table")
    ap.add_argument("--budgets", default="16,64,256,1024")
    ap.add_argument("--e2e-prompts", type=int, default=10)
    ap.add_argument("--e2e-tokens", type=int, default=128)
    ap.add_argument("--e2e-budgets", default="16,64", help="SpecExec budgets timed end to end; the best is kept")
    ap.add_argument("--truncated-layers", type=int, default=4, help="the untrained copy (the former default: 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shipped-dir", type=Path, default=SHIPPED_DIR,
                    help="a shipped-format draft folder (default: the package's)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: agree,passes,cost,e2e")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    loaded = load_model("embedded", dtype="float32")
    target, tok = loaded.model, loaded.tokenizer
    shipped = load_shipped_draft(target, args.shipped_dir)
    truncated = truncated_copy(target, args.truncated_layers)
    drafts = {f"shipped distilled ({shipped.config.num_hidden_layers} layers)": shipped,
              f"truncated untrained ({args.truncated_layers} layers)": truncated}
    budgets = [int(b) for b in args.budgets.split(",")]
    t0 = time.time()
    out = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
           f"{torch.__version__}, {torch.get_num_threads()} threads, float32. Target: SmolLM2-135M-Instruct "
           f"(embedded), chat template, greedy."]
    print(out[0], flush=True)
    if "agree" not in skip:
        rows = agreement(target, tok, drafts, oasst_prompts(args.agree_prompts), args.agree_tokens, batch=10)
        out.append(table(f"Agreement with the target's greedy token (oasst 0-{args.agree_prompts - 1}, "
                         f"{args.agree_tokens} greedy tokens each, teacher-forced)",
                         ["draft", "top-1", "top-4", "top-16", "tokens"], rows))
    if "cost" not in skip:
        rows = cost_rows(target, drafts)
        out.append(table("Forward pass cost on a 256-token context (best of 3 medians of 9)",
                         ["new tokens", "draft", "draft ms", "target ms", "draft / target"], rows))
    if "e2e" not in skip:
        e2e_budgets = [int(b) for b in args.e2e_budgets.split(",")]
        rows, split = end_to_end(target, tok, shipped, oasst_prompts(args.e2e_prompts), e2e_budgets, args.e2e_tokens)
        out.append(table(f"End to end, greedy, {args.e2e_tokens} new tokens, oasst prompts 0-{args.e2e_prompts - 1}",
                         ["decoding", "tokens", "seconds", "tokens/s", "vs autoregressive"], rows))
        out.append(table("Where the decoding time goes (seconds, all prompts)",
                         ["decoding", "target passes", "tokens/pass", "total", "draft forwards", "target forwards",
                          "rest (tree, acceptance, cache)"], split))
    if "passes" not in skip:
        rows_for = {"shipped": list(drafts)[0], "truncated": list(drafts)[1], "self": "draft = target"}
        every = {**drafts, "draft = target": target}
        chosen = {rows_for[k]: every[rows_for[k]] for k in args.pass_drafts.split(",")}
        rows = tokens_per_pass(target, tok, chosen, oasst_prompts(args.pass_prompts),
                               budgets, args.pass_tokens, args.baseline_prompts, args.big_prompts)
        out.append(table(f"SpecExec greedy tokens per target pass, {args.pass_tokens} new tokens, oasst prompts "
                         f"from 0 (number of prompts in brackets)", ["draft"] + [f"budget {b}" for b in budgets],
                         rows))
    print(f"\n(benchmark wall time {time.time() - t0:.0f} s)")
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
