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
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")


def add_offload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offload", default=None, choices=("cpu", "disk"),
                   help="stream the target's decoder layers each pass: 'cpu' = from pinned CPU RAM to a CUDA GPU; "
                        "'disk' = from the safetensors files, computed on the CPU (docs/offload.md)")
    p.add_argument("--device-size", type=int, default=2, help="layer buffers in rotation when offloading (default 2)")
    p.add_argument("--keep-layers", type=int, default=0,
                   help="when offloading: the first K decoder layers stay resident (default 0)")


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import METHODS

    p.add_argument("--method", default="specexec", choices=METHODS)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--budget", "--max-budget", dest="budget", type=int, default=64,
                   help="SpecExec: draft tokens per tree")
    p.add_argument("--max-beam-len", type=int, default=16, help="depth cap (draft passes); chain length")
    p.add_argument("--max-n-beams", type=int, default=16, help="nodes expanded per draft pass; SpecInfer chains")
    p.add_argument("--max-branch-width", type=int, default=16)
    p.add_argument("--min-log-prob", type=float, default=None)
    p.add_argument("--decay", type=float, default=1.0, help="per-level factor on cumulative draft probability")
    p.add_argument("--draft-temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


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
                                            keep_layers=args.keep_layers)
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
    if args.stats or not args.json:
        s = result.stats
        print(f"[{s.method}] {s.new_tokens} tokens in {s.target_passes} target passes "
              f"({s.tokens_per_pass:.2f} tokens/pass), {s.seconds:.2f} s, {s.tokens_per_second:.1f} tokens/s",
              file=sys.stderr)
    return 0
