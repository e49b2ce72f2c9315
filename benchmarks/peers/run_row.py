"""One row of the big-model benchmark for one prompt, in a process of its own; prints one JSON line.

Rows (ROW): ``specexec:B`` (our engine, target streamed from disk, SpecExec at budget B; B=0 is our
autoregressive decoding; ``specexec:B/int8`` or ``/int4``: the target quantized as it loads, its packed
layers streamed), ``llamacpp`` (llama.cpp's ``llama-completion``, default mmap,
autoregressive), ``llamacpp-spec:N`` (llama.cpp's own speculative decoding, ``llama-speculative`` with the
draft's GGUF, at most N drafted tokens a pass), ``accelerate`` (transformers' generate with accelerate's disk
offload), ``accelerate-assisted`` (the same with the draft as assistant model), ``airllm``.

Every row decodes greedily from the same prompt token ids and reports its tokens, the seconds from the call
to the last token (prompt pass included) and the time to the first token where the tool tells it. The
caller (benchmarks/bigmodel.py) reads the disk counters and the process's peak memory around it.

    python benchmarks/peers/run_row.py ROW --target DIR --draft DIR --prompt-ids 1,2,3 --max-new-tokens 64 \\
        [--gguf FILE --draft-gguf FILE --speculative BIN] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch


def specexec_row(args, budget: int, quantize: str | None = None) -> dict:
    from specexec import SpecExecEngine

    engine = SpecExecEngine.from_pretrained(args.target, args.draft if budget else "none", offload="disk",
                                            quantize=quantize)
    settings = dict(method="specexec", max_budget=budget) if budget else dict(method="autoregressive")
    if budget:
        settings.update(max_beam_len=args.depth, max_n_beams=args.beams)
    start = time.perf_counter()
    res = engine.generate(args.prompt_ids, max_new_tokens=args.max_new_tokens, temperature=0.0, **settings)
    wall = time.perf_counter() - start
    s = res.stats
    streamer = engine.target.specexec_offload
    return dict(tokens=res.token_ids, seconds=wall, first_token_seconds=s.first_token_seconds,
                target_passes=s.target_passes + 1,  # + the prompt's own pass
                draft_seconds=s.draft_seconds, wait_seconds=streamer.wait_seconds,
                dtype=str(engine.target.get_input_embeddings().weight.dtype).removeprefix("torch."),
                buffers=streamer.slots, reader_bytes=streamer.transport.reader.bytes_read,
                layer_loads=len(streamer.transport.reads))


def completion_tokens(tok, printed: str, eos: int) -> tuple[str, list[int]]:
    """llama-completion's printed text and its tokens: the text tokenized again, and the end-of-text token
    where it stopped there (it prints " [end of text]" for it)."""
    text = printed.rstrip("\n")
    ended = text.endswith(" [end of text]")
    text = text.removesuffix(" [end of text]")
    return text, tok(text, add_special_tokens=False)["input_ids"] + ([eos] if ended else [])


def llamacpp_row(args) -> dict:
    """llama.cpp's own program (``llama-completion``, built beside ``llama-speculative`` from the same sources),
    default mmap, no warm-up pass (our rows do not get one either)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.target)
    prompt = tok.decode(args.prompt_ids, skip_special_tokens=False)
    program = str(Path(args.speculative).with_name("llama-completion"))
    cmd = [program, "-m", args.gguf, "-p", prompt, "-n", str(args.max_new_tokens), "--temp", "0", "--top-k", "1",
           "-c", "1024", "-t", str(os.cpu_count()), "--seed", "0", "-no-cnv", "--no-display-prompt", "--no-warmup"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"llama-completion failed ({out.returncode}): {out.stderr[-2000:]}")
    log = out.stderr + out.stdout
    text, ids = completion_tokens(tok, out.stdout, min(args.eos))
    prompt_eval = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    evals = re.search(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs", log.replace("prompt eval time", ""))
    gen = ((float(prompt_eval.group(1)) if prompt_eval else 0.0) + (float(evals.group(1)) if evals else 0.0)) / 1000
    decoded = int(evals.group(2)) + 1 if evals else None  # the prompt's pass gives the first token
    return dict(tokens=ids, text=text, seconds=gen or wall, wall_seconds=wall, first_token_seconds=None,
                prompt_tokens_llamacpp=int(prompt_eval.group(2)) if prompt_eval else None, decoded=decoded,
                target_passes=decoded)


def llamacpp_spec_row(args, n_draft: int) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.target)
    prompt = tok.decode(args.prompt_ids, skip_special_tokens=False)
    cmd = [args.speculative, "-m", args.gguf, "-md", args.draft_gguf, "-p", prompt, "-n", str(args.max_new_tokens),
           "--temp", "0", "--top-k", "1", "--spec-draft-n-max", str(n_draft), "--spec-draft-n-min", "0", "-c", "1024",
           "-t", str(os.cpu_count()), "-td", str(os.cpu_count()), "--seed", "0"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"llama-speculative failed ({out.returncode}): {out.stderr[-2000:]}")
    log = out.stderr + out.stdout
    text = out.stdout  # the prompt, then the generated text (special tokens written out)
    at = text.find(prompt)
    text = text[at + len(prompt):] if at >= 0 else text
    enc = re.search(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    dec = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    drafted = re.search(r"n_drafted\s*=\s*(\d+)", log)
    accepted = re.search(r"n_accept\s*=\s*(\d+)", log)
    gen = (float(enc.group(2)) if enc else 0.0) + (float(dec.group(2)) if dec else wall)
    decoded = int(dec.group(1)) if dec else None
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # a pass emits the draft tokens it accepts plus one of its own: passes = decoded - accepted (+ the prompt's)
    passes = decoded - int(accepted.group(1)) + 1 if dec and accepted else None
    return dict(tokens=ids, text=text, seconds=gen, wall_seconds=wall, first_token_seconds=None,
                prompt_tokens_llamacpp=int(enc.group(1)) if enc else None, decoded=decoded, target_passes=passes,
                drafted=int(drafted.group(1)) if drafted else None,
                accepted=int(accepted.group(1)) if accepted else None)


def accelerate_model(folder: str, offload: Path):
    """The checkpoint with its decoder layers on accelerate's "disk" device (read from the safetensors files
    at each use), embeddings, norm and head in RAM: transformers' own way to run a model bigger than RAM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": "disk" for i in range(config.num_hidden_layers)}
    offload.mkdir(parents=True, exist_ok=True)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map=device_map,
                                                offload_folder=str(offload)).eval()


def accelerate_row(args, assisted: bool) -> dict:
    from transformers import AutoModelForCausalLM

    model = accelerate_model(args.target, Path(args.scratch) / "accelerate-offload")
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False, min_new_tokens=0)
    if assisted:
        kwargs["assistant_model"] = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.bfloat16).eval()
    ids = torch.tensor([args.prompt_ids])
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    wall = time.perf_counter() - start
    return dict(tokens=out[0, len(args.prompt_ids):].tolist(), seconds=wall, first_token_seconds=None,
                target_passes=calls["n"])


def airllm_row(args) -> dict:
    from airllm import AutoModel

    model = AutoModel.from_pretrained(args.target, device="cpu", dtype=torch.bfloat16,
                                      layer_shards_saving_path=str(Path(args.scratch) / "airllm"))
    ids = torch.tensor([args.prompt_ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, use_cache=True, do_sample=False,
                             return_dict_in_generate=True)
    wall = time.perf_counter() - start
    seq = out.sequences if hasattr(out, "sequences") else out
    return dict(tokens=seq[0, len(args.prompt_ids):].tolist(), seconds=wall, first_token_seconds=None,
                target_passes=len(seq[0]) - len(args.prompt_ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row")
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--prompt-ids", required=True, type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eos", type=lambda s: {int(x) for x in s.split(",") if x}, default={2})
    ap.add_argument("--depth", type=int, default=16, help="specexec rows: depth cap (max_beam_len)")
    ap.add_argument("--beams", type=int, default=16, help="specexec rows: nodes expanded per draft pass")
    ap.add_argument("--gguf")
    ap.add_argument("--draft-gguf")
    ap.add_argument("--speculative", help="the llama-speculative program")
    ap.add_argument("--scratch", default="/tmp/specexec-peers")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    kind, _, value = args.row.partition(":")
    start = time.perf_counter()
    if kind == "specexec":
        budget, _, quantize = value.partition("/")  # specexec:256/int8: the target quantized, its packed layers streamed
        result = specexec_row(args, int(budget or 0), quantize or None)
    elif kind == "llamacpp":
        result = llamacpp_row(args)
    elif kind == "llamacpp-spec":
        result = llamacpp_spec_row(args, int(value or 16))
    elif kind in ("accelerate", "accelerate-assisted"):
        result = accelerate_row(args, kind == "accelerate-assisted")
    elif kind == "airllm":
        result = airllm_row(args)
    else:
        raise SystemExit(f"unknown row {args.row!r}")
    result.update(row=args.row, process_seconds=time.perf_counter() - start)
    print("ROW-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
