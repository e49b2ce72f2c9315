"""A model bigger than this machine's RAM, end to end: specexec against the tools people use, side by side.

The target is a checkpoint widened from the embedded SmolLM2-135M-Instruct to the Llama-2-13B shape
(26.4 GB in bfloat16, built by ``specexec.widen``; see docs/bigmodel.md for why it is a fair cost model),
the draft is the shipped draft as a plain folder. Part 1 measures this CPU's matrix-multiply throughput at
the shapes of a tree pass and the streamed pass's time against tree size. Part 2 decodes the same
prompts greedily with every row, prompt by prompt (interleaved), each row in a process of its own after
the page cache is dropped; it reads the disk's counters around each row and checks afterwards how much of
the model the page cache still holds.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bigmodel.py --scratch /path/to/scratch [--prompts 2] \\
        [--rows specexec:0,specexec:256,llamacpp,...] [--part 1|2|both]

``--scratch`` must hold ~80 GB: the widened checkpoint (built once), its GGUF copy for llama.cpp, and the
llama.cpp build (benchmarks/peers/build_llamacpp.sh). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, oasst_prompts  # noqa: E402

DEFAULT_ROWS = ("specexec:0,specexec:256,specexec:1024,llamacpp,llamacpp-spec:16,accelerate,accelerate-assisted,"
                "airllm")


# ------------------------------------------------------------------ preparing the scratch folder
def prepare(scratch: Path, shape: str) -> dict:
    from specexec.distill.shipped import export_standalone
    from specexec.models import embedded_target_dir
    from specexec.widen import widen

    paths = dict(target=scratch / f"smollm2-{shape}", draft=scratch / "smollm2-draft",
                 gguf=scratch / f"smollm2-{shape}-bf16.gguf", draft_gguf=scratch / "smollm2-draft-bf16.gguf",
                 speculative=scratch / "llamacpp" / "llama.cpp-build" / "bin" / "llama-speculative")
    if not (paths["target"] / "model.safetensors.index.json").exists():
        widen(embedded_target_dir(), paths["target"], shape)
    if not (paths["draft"] / "config.json").exists():
        export_standalone(paths["draft"])
    for folder, gguf in ((paths["target"], paths["gguf"]), (paths["draft"], paths["draft_gguf"])):
        if not gguf.exists():
            subprocess.run([sys.executable, str(HERE / "peers" / "to_gguf.py"), str(folder), str(gguf)], check=True)
    if not paths["speculative"].exists():
        subprocess.run(["bash", str(HERE / "peers" / "build_llamacpp.sh"), str(scratch / "llamacpp")], check=True)
    return {k: str(v) for k, v in paths.items()}


# ------------------------------------------------------------------ the disk and the page cache
def disk_of(path: str) -> str:
    """The block device (as /proc/diskstats names it) holding ``path``."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if int(parts[0]) == major and int(parts[1]) == minor:
                return parts[2]
    return ""


def sectors_read(disk: str) -> int:
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if parts[2] == disk:
                return int(parts[5])
    return 0


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def cached_bytes(files: list[str]) -> int:
    """Bytes of ``files`` now in the page cache (util-linux fincore)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return -1


# ------------------------------------------------------------------ part 1
def matmul_throughput(n: int, dtype: torch.dtype, k: int = 5120, m: int = 13824, repeats: int = 5) -> float:
    """Multiply-adds x 2 per second of an (n, k) x (k, m) product in ``dtype`` (int8: ``torch._int_mm``)."""
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        rows = max(n, 17)  # _int_mm wants more than 16 rows
        a = torch.randint(-127, 127, (rows, k), dtype=torch.int8, generator=gen)
        b = torch.randint(-127, 127, (m, k), dtype=torch.int8, generator=gen).t()

        def op():
            return torch._int_mm(a, b)
        flops = 2 * rows * k * m
    else:
        a = torch.randn(n, k, generator=gen).to(dtype)
        w = torch.randn(m, k, generator=gen).to(dtype)

        def op():
            return torch.nn.functional.linear(a, w)
        flops = 2 * n * k * m
    op()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        op()
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times)


def part_one(paths: dict, sizes: list[int], repeats: int) -> None:
    from offload import PassTimer

    from specexec.models import load_model

    print(f"\n## Part 1: matrix products and the streamed pass ({machine()})", flush=True)
    print("\nthis CPU's throughput for an (n x 5120) x (5120 x 13824) product (a 13B MLP matrix), GFLOP/s:")
    print("| n | float32 | bfloat16 | int8 (_int_mm) |\n|---:|---:|---:|---:|")
    peak = {}
    for n in sizes:
        row = [matmul_throughput(n, d) / 1e9 for d in (torch.float32, torch.bfloat16, torch.int8)]
        peak[n] = row
        print(f"| {n} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:.0f} |", flush=True)
    drop_page_cache()
    model = load_model(paths["target"], offload="disk", with_tokenizer=False).model
    streamer = model.specexec_offload
    dtype = model.get_input_embeddings().weight.dtype
    layer_params = sum(p.numel() for p in model.model.layers[0].parameters())  # meta tensors count too
    n_layers = len(model.model.layers)
    head = model.lm_head.weight.numel()
    layer_bytes = sum(p.raw_nbytes for p in streamer.plans.values())
    print(f"\nstreamed pass: {n_layers} layers, {layer_bytes / 1e9:.1f} GB read a pass, compute in "
          f"{str(dtype).removeprefix('torch.')}, {streamer.slots} buffers, prompt of 64 tokens; "
          f"{repeats} passes a size (median):")
    print("| tree tokens | pass s | x 1-token pass | read GB/s | waiting for reads s | computing s | "
          "compute GFLOP/s | of bf16 matmul |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    with torch.inference_mode():
        for n in sizes:
            timer = PassTimer(model, n)
            timer.once()
            rows = []
            for _ in range(repeats):
                w0 = streamer.wait_seconds
                t, t_read = timer.once()
                rows.append((t, t_read, streamer.wait_seconds - w0))
            t, t_read, waited = (statistics.median(c) for c in zip(*rows))
            base = base or t
            computing = max(t - waited, 1e-9)
            flops = 2 * n * (n_layers * layer_params + head)
            print(f"| {n} | {t:.2f} | {t / base:.2f} | {layer_bytes / t_read / 1e9:.2f} | {waited:.2f} | "
                  f"{computing:.2f} | {flops / computing / 1e9:.0f} | "
                  f"{flops / computing / 1e9 / peak[n][1]:.0%} |", flush=True)
            del timer
    streamer.close()
    print("compute GFLOP/s: the pass's matrix products (2 x tokens x parameters) over the time it was not "
          "waiting for the disk; the last column divides that by the bfloat16 product's throughput above.")


# ------------------------------------------------------------------ part 2
def run_row(row: str, paths: dict, prompt: list[int], args, disk: str, model_files: list[str]) -> dict:
    dropped = drop_page_cache()
    before = sectors_read(disk)
    cmd = [sys.executable, str(HERE / "peers" / "run_row.py"), row, "--target", paths["target"],
           "--draft", paths["draft"], "--prompt-ids", ",".join(map(str, prompt)),
           "--max-new-tokens", str(args.max_new_tokens), "--gguf", paths["gguf"],
           "--draft-gguf", paths["draft_gguf"], "--speculative", paths["speculative"],
           "--scratch", str(args.scratch), "--depth", str(args.depth), "--beams", str(args.beams)]
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M INBLOCK %I", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW-RESULT ")), None)
    if line is None:
        print(f"  {row}: failed (exit {out.returncode}): {out.stderr[-1500:]}", flush=True)
        return {"row": row, "failed": True}
    result = json.loads(line.removeprefix("ROW-RESULT "))
    usage = [ln.split() for ln in out.stderr.splitlines() if ln.startswith("MAXRSS ")]
    # the process tree's own reads from storage (getrusage's block input, 512-byte units; counts O_DIRECT
    # and page-cache misses alike); the device's counter is kept beside it as a check
    result.update(read_bytes=int(usage[-1][3]) * 512 if usage else -1, peak_rss=int(usage[-1][1]) * 1024 if usage else -1,
                  device_read_bytes=(sectors_read(disk) - before) * 512,
                  cached_after=cached_bytes(model_files), dropped_cache=dropped, process_wall=wall)
    return result


def part_two(paths: dict, args) -> None:
    from specexec import SpecExecEngine

    rows = args.rows.split(",")
    engine = SpecExecEngine.from_pretrained(paths["target"], "none", offload="disk")
    prompts = oasst_prompts(engine, args.first_prompt + args.prompts)[args.first_prompt:]
    eos = sorted(engine.eos_ids)
    tokenizer = engine.tokenizer
    engine.target.specexec_offload.close()
    del engine
    target_files = sorted(str(p) for p in Path(paths["target"]).glob("*.safetensors"))
    model_files = target_files + [paths["gguf"]]
    disk = disk_of(paths["target"])
    total = sum(os.path.getsize(f) for f in target_files)
    with open("/proc/meminfo") as f:
        ram = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) * 1024
    print(f"\n## Part 2: end to end ({machine()})\ntarget {paths['target']}: {total / 1e9:.1f} GB of safetensors "
          f"(RAM {ram / 1e9:.1f} GB); {len(prompts)} oasst prompts ({[len(p) for p in prompts]} tokens) x "
          f"{args.max_new_tokens} new tokens, greedy; rows interleaved prompt by prompt; page cache dropped "
          f"before each row; disk {disk}", flush=True)
    results: dict[str, list[dict]] = {r: [] for r in rows}
    log = open(args.scratch / "bigmodel-rows.jsonl", "a")
    for i, prompt in enumerate(prompts):
        for row in rows:
            r = run_row(row, paths, prompt, args, disk, model_files)
            r["prompt"] = args.first_prompt + i
            results[row].append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
            if not r.get("failed"):
                n = new_tokens(r)
                print(f"  prompt {r['prompt']} {row:<22} {n} tokens in {r['seconds']:.1f} s "
                      f"({n / r['seconds']:.3f} tok/s), read {r['read_bytes'] / 1e9:.1f} GB, peak RSS "
                      f"{r['peak_rss'] / 1e9:.1f} GB, page cache after: {r['cached_after'] / 1e9:.1f} GB", flush=True)
    report(results, rows, eos, tokenizer, args.max_new_tokens,
           {args.first_prompt + i: p for i, p in enumerate(prompts)})


def new_tokens(r: dict) -> int:
    """Tokens a row produced (llama.cpp's programs count their own: their text, tokenized again, may split
    differently; llama-speculative may pass the limit by a few)."""
    return r.get("decoded") or len(r["tokens"])


def agreement(tokens: list[int], reference: list[int]) -> int:
    """Tokens equal to the reference before the first difference."""
    return next((k for k, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))


def same_text(text: str, reference: str) -> bool:
    """A program that prints text (llama-speculative, which may run past the token limit): the reference's
    text is where its output begins (or its whole output, where the reference stopped later)."""
    return text.startswith(reference) or (bool(text) and reference.startswith(text))


@functools.cache
def float32_reference():
    """The embedded target in float32, alone: the function the widened target computes (and its tokenizer)."""
    import specexec

    return specexec.load("embedded", "none", dtype="float32")


def departures(prompts: dict[int, list[int]], results: dict, rows: list[str]) -> dict[str, str]:
    """Each row judged along its own path against the function the widened target computes: the embedded
    target in float32. At every token where the row's choice is not float32's greedy choice, the gap
    between float32's top logit and the logit of the row's token, relative to the top logit; a gap under
    2^-5 is a near-tie that bfloat16 rounding may flip (the bfloat16 exactness tests' tolerance)."""
    small = float32_reference().target
    out = {}
    for row in rows:
        gaps, worst = [], 0.0
        for r in results[row]:
            if r.get("failed") or r["prompt"] not in prompts:
                continue
            tokens = r["tokens"][:new_tokens(r)]  # a printed text, tokenized again, may end in one more
            ids = prompts[r["prompt"]] + tokens
            with torch.no_grad():
                logits = small(torch.tensor([ids])).logits[0].double()
            start = len(prompts[r["prompt"]]) - 1
            for k, tok in enumerate(tokens):
                row_logits = logits[start + k]
                top = float(row_logits.max())
                if int(row_logits.argmax()) != tok:
                    gap = (top - float(row_logits[tok])) / max(abs(top), 1.0)
                    gaps.append(k)
                    worst = max(worst, gap)
        out[row] = ("none" if not gaps else
                    f"{len(gaps)} (at {', '.join(map(str, gaps[:4]))}{', ...' if len(gaps) > 4 else ''}; "
                    f"largest gap {100 * worst:.2f}%{'' if worst < 2 ** -5 else ', NOT a near-tie'})")
    return out


def report(results: dict, rows: list[str], eos, tokenizer, max_new: int, prompts: dict | None = None) -> None:
    ref_row = rows[0]
    refs = {r["prompt"]: r["tokens"] for r in results[ref_row] if not r.get("failed")}
    base = None
    off = departures(prompts, results, rows) if prompts else {}
    print(f"\n| row | tok/s | x {ref_row} | tokens / target pass | s / target pass | GB read / pass | peak RSS GB | "
          f"read GB/s | page cache after (GB) | equal to {ref_row} | departures from float32 greedy |\n"
          f"|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        done = [r for r in results[row] if not r.get("failed")]
        if not done:
            print(f"| {row} | failed | | | | | | | | | |")
            continue
        tokens = sum(new_tokens(r) for r in done)
        seconds = sum(r["seconds"] for r in done)
        speed = tokens / seconds
        base = base or speed
        passes = [r.get("target_passes") for r in done]
        per_pass = f"{tokens / sum(passes):.2f}" if all(passes) else "n/a"
        s_pass = f"{seconds / sum(passes):.1f}" if all(passes) else "n/a"
        gb_pass = f"{sum(r['read_bytes'] for r in done) / sum(passes) / 1e9:.1f}" if all(passes) else \
            f"{sum(r['read_bytes'] for r in done) / 1e9:.0f} in all"
        equal = []
        for r in done:
            ref = refs.get(r["prompt"])
            if ref is None:
                equal.append("?")
            elif r["tokens"] == ref:
                equal.append("yes")
            elif len(r["tokens"]) < len(ref) and r["tokens"] == ref[:len(r["tokens"])]:
                equal.append(f"yes (its {len(r['tokens'])} tokens)")
            elif "text" in r and same_text(r["text"], tokenizer.decode(ref, skip_special_tokens=False)):
                equal.append("yes (text)")
            else:
                equal.append(f"first {agreement(r['tokens'], ref)} of {len(ref)}")
        print(f"| {row} | {speed:.3f} | {speed / base:.2f} | {per_pass} | {s_pass} | {gb_pass} | "
              f"{max(r['peak_rss'] for r in done) / 1e9:.1f} | "
              f"{sum(r['read_bytes'] for r in done) / sum(r['process_wall'] for r in done) / 1e9:.2f} | "
              f"{max(r['cached_after'] for r in done) / 1e9:.1f} | "
              f"{', '.join(equal)} | {off.get(row, 'n/a')} |", flush=True)


def table_from_log(args) -> None:
    """The part-two table from the rows already run (the last run of each row and prompt in the log), for
    rows run in separate invocations."""
    rows = args.rows.split(",")
    last: dict[tuple, dict] = {}
    with open(args.scratch / "bigmodel-rows.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("row") in rows and not r.get("failed"):
                last[(r["row"], r["prompt"])] = r
    results = {row: [r for (name, _), r in sorted(last.items()) if name == row] for row in rows}
    reference = float32_reference()  # the widened target's tokenizer and chat template are its own
    prompts = oasst_prompts(reference, 1 + max(r["prompt"] for r in last.values()))
    report(results, rows, None, reference.tokenizer, args.max_new_tokens, dict(enumerate(prompts)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", type=Path, required=True)
    ap.add_argument("--shape", default="13b")
    ap.add_argument("--part", choices=("1", "2", "both"), default="both")
    ap.add_argument("--sizes", default="1,16,64,256,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default=DEFAULT_ROWS)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--first-prompt", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--beams", type=int, default=16)
    ap.add_argument("--table-only", action="store_true",
                    help="print part two's table for --rows from the rows logged in the scratch folder, running none")
    args = ap.parse_args()
    if args.table_only:  # from the log alone: nothing to build or run
        return table_from_log(args)
    args.scratch.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.scratch, args.shape)
    torch.set_num_threads(os.cpu_count())
    if args.part in ("1", "both"):
        part_one(paths, [int(s) for s in args.sizes.split(",")], args.repeats)
    if args.part in ("2", "both"):
        part_two(paths, args)
    print(f"\nbenchmark process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")


if __name__ == "__main__":
    main()
