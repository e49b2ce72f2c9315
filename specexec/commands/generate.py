"""``specexec generate``: one prompt, streamed to the terminal or returned as JSON."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "generate text from one prompt with speculative decoding"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="embedded",
                   help="target model: hub id, local folder, .gguf file, or 'embedded' (default)")
    p.add_argument("--draft", default=None,
                   help="draft model: hub id, folder, .gguf, 'self', 'truncated:K' (target's first K layers); "
                        "default: the default draft of the target")
    from ..draft_vocab import draft_vocab_value

    p.add_argument("--draft-vocab", type=draft_vocab_value, default=None, metavar="K|full",
                   help="a distilled draft's output head: its K most frequent tokens, or 'full'; default: the "
                        "K stored with the draft (the shipped draft's: docs/draft.md)")
    p.add_argument("--dtype", default="auto", help="auto (default: bfloat16 for a bfloat16 checkpoint on a CPU with native "
                   "bfloat16, float16 on CUDA, else float32), float32, bfloat16, float16, float64")
    from ..drafts import DRAFT_DTYPES

    p.add_argument("--draft-dtype", default="auto", choices=DRAFT_DTYPES,
                   help="the dtype the draft computes in (it only proposes: greedy output and the output's "
                        "distribution do not change); 'auto' (default): bfloat16 for a float32 target on a CPU with "
                        "native bfloat16, else --dtype")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--quantize", default=None, choices=("int8", "int4"),
                   help="quantize the target's weights as they load: int8 (torchao) or int4 (bitsandbytes NF4); "
                        "docs/quantization.md")
    p.add_argument("--draft-quantize", default=None, choices=("int8", "int4"),
                   help="quantize the draft's weights the same way")


def add_offload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offload", default=None, choices=("cpu", "disk"),
                   help="stream the target's decoder layers each pass: 'cpu' = from pinned CPU RAM to a CUDA GPU; "
                        "'disk' = from the safetensors files, computed on the CPU (docs/offload.md)")
    p.add_argument("--device-size", type=int, default=None,
                   help="layer buffers in rotation when offloading (default: 2 for --offload cpu; for --offload "
                        "disk as many as 512 MiB holds, 2 to 16)")
    p.add_argument("--keep-layers", type=int, default=0,
                   help="when offloading: the first K decoder layers stay resident (default 0)")


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """The decoding flags; their defaults are GenerationConfig's, shared with the API, chat and serve."""
    from ..config import METHODS, GenerationConfig, budget_value

    d = GenerationConfig()
    p.add_argument("--method", default=d.method, choices=METHODS, help="default: %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="default: %(default)s")
    p.add_argument("--temperature", type=float, default=d.sampling.temperature, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=d.sampling.top_p, help="default: %(default)s")
    p.add_argument("--top-k", type=int, default=d.sampling.top_k, help="0 = off (default: %(default)s)")
    p.add_argument("--budget", "--max-budget", dest="budget", type=budget_value, default=d.max_budget,
                   help="SpecExec: draft tokens per tree, or 'auto': chosen before every pass for this machine "
                        "from measured pass costs and the trees accepted so far (default: %(default)s)")
    p.add_argument("--max-beam-len", type=int, default=d.max_beam_len,
                   help="depth cap (draft passes); chain length (default: %(default)s)")
    p.add_argument("--max-n-beams", type=int, default=d.max_n_beams,
                   help="nodes expanded per draft pass; SpecInfer chains (default: %(default)s)")
    p.add_argument("--max-branch-width", type=int, default=d.max_branch_width,
                   help="children proposed per expanded node (default: %(default)s)")
    p.add_argument("--min-log-prob", type=float, default=d.min_log_prob,
                   help="lowest cumulative draft log-probability kept (default: %(default)s = none)")
    p.add_argument("--decay", type=float, default=d.decay,
                   help="per-level factor on cumulative draft probability (default: %(default)s)")
    p.add_argument("--draft-temperature", type=float, default=d.draft_temperature,
                   help="SpecInfer / chain: the draft's temperature (default: %(default)s = the run's)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the prompt text ('-' reads standard input)")
    add_model_arguments(p)
    add_offload_arguments(p)
    add_decoding_arguments(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the target's chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--stats", action="store_true", help="print generation statistics to stderr")


def config_from_args(args):
    from ..config import GenerationConfig, SamplingConfig

    return GenerationConfig(
        method=args.method, max_new_tokens=args.max_new_tokens,
        sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k),
        max_budget=args.budget, max_beam_len=args.max_beam_len, max_n_beams=args.max_n_beams,
        max_branch_width=args.max_branch_width, min_log_prob=args.min_log_prob, decay=args.decay,
        draft_temperature=args.draft_temperature, seed=args.seed,
    )


def run(args) -> int:
    from ..engine import SpecExecEngine
    from ..models import parse_device, parse_draft, parse_dtype

    cfg = config_from_args(args)  # validate before loading anything
    parse_dtype(args.dtype)
    if args.offload:  # offload settings first: they say which device the target computes on
        from ..offload import OffloadOptions

        OffloadOptions(args.offload, args.device_size, args.keep_layers).compute_device(args.device)
    parse_device(args.device)
    parse_draft(args.draft)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        from ..errors import PromptError

        raise PromptError("the prompt is empty")
    draft = "none" if cfg.method == "autoregressive" and args.draft is None else args.draft
    engine = SpecExecEngine.from_pretrained(args.target, draft, dtype=args.dtype, device=args.device, config=cfg,
                                            offload=args.offload, device_size=args.device_size,
                                            keep_layers=args.keep_layers, draft_vocab=args.draft_vocab,
                                            draft_dtype=args.draft_dtype,
                                            quantize=args.quantize, draft_quantize=args.draft_quantize)
    stream = engine.stream(prompt, chat=args.chat)
    pieces: list[str] = []
    try:
        for chunk in stream:
            pieces.append(chunk.text)
            if not args.json and chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        if not args.json:
            sys.stdout.write("\n")
        print("specexec: interrupted; the text above is what was generated so far", file=sys.stderr)
        if args.json:
            print(json.dumps({"text": "".join(pieces), "interrupted": True}))
        return 130
    result = stream.result
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        sys.stdout.write("\n")
    s = result.stats
    if not args.json:
        stop = STOP_WORDS.get(s.stop_reason, s.stop_reason)
        print(f"[{s.method}] {s.new_tokens} tokens in {s.target_passes} target passes "
              f"({s.tokens_per_pass:.2f} tokens/pass), {s.seconds:.2f} s, {s.tokens_per_second:.1f} tokens/s; {stop}",
              file=sys.stderr)
    if args.stats:
        print(stats_report(s), file=sys.stderr)
    return 0


STOP_WORDS = {"eos": "stopped at the end-of-sequence token", "length": "stopped at --max-new-tokens",
              "context": "stopped: the target's context is full"}


def stats_report(s) -> str:
    """The details behind the summary line (``--stats``)."""
    from collections import Counter

    hist = Counter(s.accepted_per_pass)
    return "\n".join([
        f"prefill {s.prefill_seconds:.2f} s, first token after {s.first_token_seconds:.2f} s",
        f"decoding {s.seconds:.2f} s: growing trees {s.draft_seconds:.2f} s (draft forward {s.draft_forward_seconds:.2f} s), "
        f"verifying {s.target_seconds:.2f} s (target forward {s.target_forward_seconds:.2f} s); "
        f"outside forward passes {100 * s.overhead_share:.1f}%",
        f"draft passes {s.draft_passes}; mean tree size {s.mean('tree_sizes'):.1f}, mean depth {s.mean('tree_depths'):.1f}",
        *(["budgets of the passes' trees (0: no tree): "
           + ", ".join(f"{k}: {n}x" for k, n in sorted(Counter(s.budgets).items()))] if s.budgets else []),
        "tokens accepted per target pass: " + ", ".join(f"{k}: {hist[k]}x" for k in sorted(hist)),
    ])
