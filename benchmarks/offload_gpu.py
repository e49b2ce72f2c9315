"""The paper's offloading tier on a CUDA GPU: a Llama-2-7B-shaped float16 target with random weights,
its decoder layers in pinned CPU RAM streamed into ``--device-size`` GPU buffers (``offload="cpu"``).

Prints the pinned host-to-device copy bandwidth (one 1 GiB block, median of 5 copies), then for each
tree size n: the resident pass, the streamed pass, the copy bound (layer bytes / that bandwidth) and the
share of the bandwidth a streamed pass reaches; and whether the streamed logits equal those of the
same checkpoint loaded whole on the GPU by transformers (one token, and a 64-token prefix). The model
is built on the GPU from its config (random initialisation) and saved once into ``--folder``. Needs CUDA.

Then, end to end (``--prompts`` > 0): greedy decoding of random token prompts with the target streamed,
autoregressive against SpecExec at ``--budgets``, the draft the target's first ``--draft-layers`` layers
resident on the GPU (random weights: the draft's agreement says nothing of a trained pair), every row's
tokens checked against the autoregressive row's, and those against transformers' ``generate`` on the
resident model.

    python benchmarks/offload_gpu.py --folder /tmp/llama7b-random [--sizes 1,16,64,256,1024] [--layers 32]
                                     [--prompts 3] [--max-new-tokens 32] [--budgets 16,64,256,1024]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from offload import h2d_bandwidth, pass_seconds

SHAPE = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
             num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True, help="where the random model is saved (once)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--sizes", default="1,16,64,256,1024")
    ap.add_argument("--device-size", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=3, help="end to end: random prompts (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--budgets", default="16,64,256,1024")
    ap.add_argument("--draft-layers", type=int, default=2)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="the target's dtype")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("offload_gpu.py needs a CUDA GPU")
    import transformers

    from specexec.models import load_model

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}", flush=True)
    bandwidth = h2d_bandwidth()
    print(f"pinned host-to-device copy: {bandwidth / 1e9:.1f} GB/s", flush=True)
    config = transformers.LlamaConfig(**SHAPE, num_hidden_layers=args.layers, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2)
    t = time.perf_counter()
    if not (args.folder / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda"):
            transformers.LlamaForCausalLM(config).to(getattr(torch, args.dtype)).save_pretrained(args.folder)
        torch.cuda.empty_cache()
        print(f"random model built and saved in {time.perf_counter() - t:.0f} s", flush=True)
    resident = load_model(str(args.folder), dtype=args.dtype, device="cuda", with_tokenizer=False).model
    t = time.perf_counter()
    streamed = load_model(str(args.folder), dtype=args.dtype, device="cuda", offload="cpu",
                          device_size=args.device_size, with_tokenizer=False).model
    plans = streamed.specexec_offload.plans
    nbytes = sum(p.raw_nbytes for p in plans.values())
    print(f"streamed model loaded in {time.perf_counter() - t:.0f} s: {len(plans)} layers, "
          f"{nbytes / 1e9:.2f} GB a pass, {streamed.specexec_offload.slots} GPU buffers", flush=True)
    with torch.no_grad():
        for ids in (torch.tensor([[5]]), torch.randint(0, 32000, (1, 64), generator=torch.Generator().manual_seed(1))):
            ids = ids.cuda()
            same = torch.equal(streamed(ids).logits, resident(ids).logits)
            print(f"logits of a {ids.shape[1]}-token pass equal the resident model's: {same}", flush=True)
    bound = nbytes / bandwidth
    print("\n| tree tokens | resident pass (ms) | streamed pass (ms) | copy bound (ms) | share of the copy bandwidth |")
    print("|---:|---:|---:|---:|---:|")
    for n in [int(s) for s in args.sizes.split(",")]:
        with torch.inference_mode():
            r, s = pass_seconds(resident, n, 3)[0], pass_seconds(streamed, n, 3)[0]
        print(f"| {n} | {r * 1e3:.1f} | {s * 1e3:.1f} | {bound * 1e3:.1f} | {bound / s:.0%} |", flush=True)
    if args.prompts:
        end_to_end(args, resident, streamed)


def end_to_end(args, resident, streamed) -> None:
    from common import GreedyRuns

    from specexec import SpecExecEngine
    from specexec.models import truncated_copy

    device = resident.get_input_embeddings().weight.device
    vocab = resident.config.vocab_size
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, vocab, (32,), generator=gen).tolist() for _ in range(args.prompts)]
    with torch.no_grad():
        wants = []
        for p in prompts:
            x = torch.tensor([p], device=device)
            out = resident.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.max_new_tokens,
                                    do_sample=False, pad_token_id=0)
            wants.append(out[0, len(p):].tolist())
    draft = truncated_copy(streamed, args.draft_layers).to(device).eval()
    engine = SpecExecEngine(streamed, None, draft)
    print(f"\nend to end: {len(prompts)} random prompts of 32 tokens, {args.max_new_tokens} new tokens, greedy, "
          f"target streamed (offload='cpu'), draft: its first {args.draft_layers} layers", flush=True)
    runs = GreedyRuns(engine, prompts, args.max_new_tokens)
    configs = [("autoregressive", dict(method="autoregressive"))]
    configs += [(f"SpecExec budget {b}", dict(method="specexec", max_budget=int(b))) for b in args.budgets.split(",")]
    runs.run_all(configs, interleave=True)
    same = [runs.reference[i] == want for i, want in enumerate(wants)]
    print(f"autoregressive (streamed) = transformers' generate on the resident model: {same}", flush=True)
    for (label, i), got in runs.outputs.items():  # where a row parts from generate: the target's top-2 gap there
        want = wants[i]
        k = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if k is None:
            continue
        with torch.no_grad():
            top = resident(torch.tensor([prompts[i] + want[:k]], device=device)).logits[0, -1].float()
        values = torch.topk(top, 2).values
        print(f"{label}, prompt {i}: parts from generate at token {k}; the resident target's two best logits there "
              f"{values[0]:.4f} and {values[1]:.4f} ({args.dtype})", flush=True)
    base = runs.rows[0].tokens_per_second
    print("\n| method (target streamed to the GPU) | tokens/s | vs autoregressive | tokens per target pass | "
          "seconds per iteration | of which drafting | same tokens as autoregressive |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in runs.rows:
        print(f"| {r.label} | {r.tokens_per_second:.2f} | {r.tokens_per_second / base:.2f}x | {r.tokens_per_pass:.2f} | "
              f"{r.seconds_per_pass:.3f} | {r.draft_seconds_per_pass:.3f} | {'yes' if r.same else 'NO'} |")


if __name__ == "__main__":
    main()
