"""Server benchmark: time to first token and tokens/s through `specexec serve` (streaming, one client,
the official `openai` client) against the engine in-process, on the same prompts in the same run.

Both sides generate greedily with the same settings on the embedded prompt set (chat prompts through the
target's chat template); times are end to end per request (prefill included), the first token being the first
non-empty piece of text. One warm-up request per side is excluded. The engine and the server are loaded
side by side and take turns prompt by prompt (alternating which goes first), so that a drift in the
machine's speed hits both alike. The texts are checked to be equal.

    python benchmarks/serve.py [--prompts 5] [--max-new-tokens 32] [--budget 64] [--rounds 1] [--target embedded]
                               [--draft ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def in_process(engine, prompts, max_new_tokens):
    rows = []
    for text in prompts:
        start = time.perf_counter()
        first = None
        stream = engine.stream(text, chat=True, max_new_tokens=max_new_tokens)
        pieces = []
        for chunk in stream:
            if first is None and chunk.text:
                first = time.perf_counter() - start
            pieces.append(chunk.text)
        total = time.perf_counter() - start
        s = stream.result.stats
        rows.append(dict(text="".join(pieces), ttft=first or total, seconds=total, tokens=s.new_tokens,
                         passes=s.target_passes))
    return rows


def through_server(client, model, prompts, max_new_tokens):
    rows = []
    for text in prompts:
        start = time.perf_counter()
        first, pieces, usage, passes = None, [], None, 0
        for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                    max_tokens=max_new_tokens, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices:
                piece = chunk.choices[0].delta.content or ""
                if first is None and piece:
                    first = time.perf_counter() - start
                pieces.append(piece)
                if chunk.choices[0].finish_reason:
                    passes = chunk.model_extra["specexec"]["target_passes"]
            if chunk.usage:
                usage = chunk.usage
        total = time.perf_counter() - start
        rows.append(dict(text="".join(pieces), ttft=first or total, seconds=total, tokens=usage.completion_tokens,
                         passes=passes))
    return rows


def summary(label, rows):
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return (f"| {label} | {statistics.mean(r['ttft'] for r in rows):.3f} | {statistics.median(r['ttft'] for r in rows):.3f}"
            f" | {tokens / seconds:.2f} | {tokens / sum(r['passes'] for r in rows):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="embedded")
    ap.add_argument("--draft", default=None)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="times through the prompts")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import openai
    import torch

    from serve_helpers import ServerProcess
    from specexec import GenerationConfig, SpecExecEngine
    from specexec.experiments.datasets import resolve
    from specexec.experiments.loop import _hardware as hardware

    prompts = [p.text for p in resolve(None).prompts[: args.prompts + 1]]
    warm, prompts = prompts[0], prompts[1:]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, max_budget=args.budget)
    engine = SpecExecEngine.from_pretrained(args.target, args.draft, config=cfg)
    server_args = ["--target", args.target, "--served-model-name", "bench", "--budget", str(args.budget)]
    if args.draft:
        server_args += ["--draft", args.draft]
    server = ServerProcess(*server_args)
    local, remote = [], []
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        in_process(engine, [warm], 4)
        through_server(client, "bench", [warm], 4)
        # prompt by prompt, alternating which side goes first: a drift in the machine's speed hits both alike
        for r in range(args.rounds):
            for i, text in enumerate(prompts):
                sides = [lambda: local.extend(in_process(engine, [text], args.max_new_tokens)),
                         lambda: remote.extend(through_server(client, "bench", [text], args.max_new_tokens))]
                for side in sides if (i + r) % 2 == 0 else sides[::-1]:
                    side()
    finally:
        server.stop()

    same = sum(a["text"] == b["text"] for a, b in zip(local, remote))
    n = len(local)
    print()
    print(f"Machine: {hardware('cpu')}, torch {torch.__version__}")
    print(f"Target {args.target}, draft {args.draft or 'default'}, greedy, budget {args.budget}, {len(prompts)} "
          f"prompts of the embedded set (chat template), up to {args.max_new_tokens} new tokens; "
          f"identical texts: {same}/{n}; {args.rounds} round(s), the two paths alternating prompt by prompt")
    print()
    print("| path | time to first token, mean (s) | median (s) | tokens/s | tokens per target pass |")
    print("|---|---:|---:|---:|---:|")
    print(summary("engine in-process (`engine.stream`)", local))
    print(summary("`specexec serve`, streaming, one client", remote))
    ratio = (sum(r["tokens"] for r in remote) / sum(r["seconds"] for r in remote)) / \
        (sum(r["tokens"] for r in local) / sum(r["seconds"] for r in local))
    print(f"\nserver tokens/s / in-process tokens/s: {ratio:.3f}")


if __name__ == "__main__":
    main()
