"""Quantized targets: the embedded target in float32, bfloat16, int8 (torchao), int4 (bitsandbytes
NF4) and as a W4A16 compressed-tensors checkpoint (round to nearest, groups of 64; written once into
the cache), resident and streamed from disk, in one run.

For each: the decoder-layer bytes a pass moves (resident: the layers' tensors; streamed: what the reader
reads per pass, past the page cache), one target pass over n = 1 and 64 new tokens after a 64-token
prefix, and end to end (greedy, oasst prompts, chat template, the shipped draft resident in the target's
dtype and quantization): autoregressive and SpecExec at --budgets, tokens/s and tokens per target pass.
Tokens per pass says how well the draft agrees with each quantized target (the float32 rows are the
reference). Every SpecExec row's tokens are checked against its own target's autoregressive tokens.

    python benchmarks/quantization.py [--prompts 3] [--max-new-tokens 32] [--budgets 16,64] [--variants float32,ct]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc

import torch
from common import GreedyRuns, machine, oasst_prompts
from offload import pass_seconds

VARIANTS = [("float32", "float32", None), ("bfloat16", "bfloat16", None), ("int8", "float32", "int8"),
            ("int4", "float32", "int4"), ("W4A16 (compressed-tensors)", "float32", "ct")]
CT_GROUP = 64  # the embedded target's hidden size, 576, is a multiple of 64 (not of 128)


def ct_checkpoint() -> str:
    """The embedded target as a W4A16 compressed-tensors checkpoint (round to nearest), written once."""
    from specexec.ct_checkpoint import write_compressed_tensors
    from specexec.models import cache_dir, load_model

    folder = cache_dir() / "compressed-tensors" / f"SmolLM2-135M-Instruct-W4A16-g{CT_GROUP}"
    if not (folder / "config.json").exists():
        loaded = load_model("embedded", dtype="float32")
        write_compressed_tensors(loaded.model, folder, "W4A16", CT_GROUP)
        loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def layer_bytes(model) -> int:
    """Bytes of the decoder layers' tensors: streamed, what a pass reads; resident, what the layers hold
    (quantized weights packed with their scales; a compressed-tensors model holds its weights decompressed)."""
    from specexec.offload.packed import Packing
    from specexec.offload.plan import find_decoder_layers

    streamer = getattr(model, "specexec_offload", None)
    if streamer is not None:
        return sum(p.raw_nbytes for p in streamer.plans.values())
    packing = Packing()
    return sum(t.numel() * t.element_size() for i, layer in enumerate(find_decoder_layers(model)[1])
               for local, p in layer.named_parameters() for t in packing.cut(i, local, p).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=3, help="oasst prompts (from the first)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--budgets", default="16,64", help="SpecExec budgets; the best is reported")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per size")
    ap.add_argument("--variants", default="float32,bfloat16,int8,int4,ct",
                    help="of float32, bfloat16, int8, int4, ct (W4A16 compressed-tensors, written once)")
    ap.add_argument("--regimes", default="resident,disk")
    args = ap.parse_args()

    from specexec import SpecExecEngine
    from specexec.drafts import default_draft
    from specexec.models import EMBEDDED, load_model

    print(f"machine: {machine()}", flush=True)
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = []
    chosen = args.variants.split(",")
    for name, dtype, quantize in [v for v in VARIANTS if (v[2] or v[0]) in chosen or v[0] in chosen]:
        target, quantize = (ct_checkpoint(), None) if quantize == "ct" else ("embedded", quantize)
        for regime in args.regimes.split(","):
            offload = "disk" if regime == "disk" else None
            loaded = load_model(target, dtype=dtype, quantize=quantize, offload=offload)
            model = loaded.model
            with torch.inference_mode():
                t1, _ = pass_seconds(model, 1, args.repeats)
                t64, _ = pass_seconds(model, 64, args.repeats)
            # the shipped draft for every row (the compressed-tensors folder is the embedded target quantized)
            draft, _ = default_draft(None, dataclasses.replace(loaded, name=EMBEDDED), dtype=dtype, quantize=quantize,
                                     draft_dtype=dtype)  # in the target's dtype, for every row alike
            engine = SpecExecEngine(model, loaded.tokenizer, draft, draft_tokenizer=loaded.tokenizer)
            print(f"{name}, {regime}: {layer_bytes(model) / 1e6:.1f} MB of layers per pass, pass n=1 "
                  f"{t1 * 1e3:.0f} ms, n=64 {t64 * 1e3:.0f} ms", flush=True)
            runs = GreedyRuns(engine, oasst_prompts(engine, args.prompts), args.max_new_tokens)
            ar = runs.run("autoregressive", method="autoregressive")
            spec = [runs.run(f"SpecExec budget {b}", method="specexec", max_budget=b) for b in budgets]
            best = max(spec, key=lambda r: r.tokens_per_second)
            rows.append((name, regime, layer_bytes(model), t1, t64, ar, best, all(r.same for r in spec)))
            del engine, draft, model, loaded, runs
            gc.collect()
    print(f"\n{args.prompts} oasst prompts x {args.max_new_tokens} new tokens, greedy; SpecExec best of budgets "
          f"{args.budgets}")
    print("\n| target | where | layer MB per pass | pass n=1 (ms) | pass n=64 (ms) | autoregressive tok/s | "
          "SpecExec tok/s (budget) | vs autoregressive | tokens per pass | same tokens |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, regime, nbytes, t1, t64, ar, best, same in rows:
        budget = best.label.rsplit(" ", 1)[-1]
        print(f"| {name} | {'streamed from disk' if regime == 'disk' else 'in RAM'} | {nbytes / 1e6:.1f} | "
              f"{t1 * 1e3:.0f} | {t64 * 1e3:.0f} | {ar.tokens_per_second:.2f} | {best.tokens_per_second:.2f} ({budget}) "
              f"| {best.tokens_per_second / ar.tokens_per_second:.2f}x | {best.tokens_per_pass:.2f} | "
              f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
