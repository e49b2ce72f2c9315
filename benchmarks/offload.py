"""Offloading benchmark: the embedded target with its decoder layers streamed from disk, or (``--tier cpu``,
on a CUDA GPU) from pinned CPU RAM to the GPU.

Part 1, one target pass over a tree of n tokens (on top of a 64-token prefix in the cache), for
n in --sizes: the target in RAM, the target streamed from disk (``offload="disk"``), and the disk
read alone: the streamed layers read by the same reader, page cache bypassed, with the streaming
reader idle. The three are measured in turn, --repeats rounds (the disk's speed varies from one
minute to the next); each timed streamed pass follows an untimed one, as in decoding with no
drafting between passes. The I/O bound of a round is the faster of the two times the disk took for
the layers' bytes in it: read alone, or read during the streamed pass. A streamed pass cannot beat
max(I/O bound, in-RAM pass); the table gives the medians of the rounds' times and the median (and
range) of the rounds' ratios to that, and to max(the time its own reads took, in-RAM pass).

Part 2, end to end: greedy decoding of oasst prompts (chat template), the target streamed from
disk, the shipped draft resident: autoregressive, SpecExec at --budgets, SpecInfer; tokens/s and
tokens per target pass side by side (warm-up excluded, one process, same prompts). Every row's
tokens are checked against the autoregressive row's. With several ``--device-size`` values every
method runs with each (the target loaded once per value): more buffers let the reader go on
reading the next pass's layers while the draft grows the tree; with several ``--draft-dtype`` values
every drafting method runs with the draft in each. Each iteration's time is split into drafting,
waiting for layer reads and the rest (the target's compute, acceptance, cache).

With ``--tier cpu`` (the paper's setting; needs CUDA) the same two parts run on the GPU with
``offload="cpu"``: part 1 puts the streamed pass next to the target resident on the GPU and the copy
bound (layer bytes / the pinned host-to-device bandwidth, measured in each round); part 2 splits an
iteration into drafting and the rest only (the copies wait on the GPU, not in the host), and adds
autoregressive and SpecExec (the first budget) rows with the target resident on the GPU; the draft
is resident on the GPU.

    python benchmarks/offload.py [--prompts 10] [--max-new-tokens 128] [--budgets 16,64,256,1024]
                                 [--device-size 2[,8]] [--draft-dtype float32,bfloat16] [--interleave]
                                 [--no-specinfer] [--tier cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import GreedyRuns, machine, oasst_prompts


def disk_bandwidth(plans, repeats: int = 3) -> tuple[float, bool]:
    """Bytes per second reading every streamed layer once, past the page cache (best of ``repeats``)."""
    from specexec.offload.reader import LayerReader, aligned_empty

    reader = LayerReader()
    block = aligned_empty(max(p.raw_nbytes for p in plans))
    best = 0.0
    for _ in range(repeats):
        start_bytes, start = reader.bytes_read, time.perf_counter()
        for p in plans:
            reader.read(p, block)
        best = max(best, (reader.bytes_read - start_bytes) / (time.perf_counter() - start))
    direct = reader.uses_direct_io
    reader.close()
    return best, direct


def h2d_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second of one pinned host block copied to the GPU (median)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dev.copy_(host, non_blocking=True)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return nbytes / statistics.median(times[1:])


class Tier:
    """Where the layers stream from, and what bounds a streamed pass: the disk's read bandwidth
    (``disk``: computed on the CPU) or the pinned host-to-GPU copy bandwidth (``cpu``: on a CUDA GPU)."""

    def __init__(self, name: str):
        self.name = name
        self.gpu = name == "cpu"
        self.device = "cuda" if self.gpu else "cpu"
        self.source = "pinned RAM" if self.gpu else "disk"
        self.resident_place = "on the GPU" if self.gpu else "in RAM"

    def load(self, size: int | None, with_tokenizer: bool = True):
        from specexec.models import load_model

        return load_model("embedded", dtype="float32", device=self.device, offload=self.name, device_size=size,
                          with_tokenizer=with_tokenizer)

    def resident(self):
        """The same target loaded whole, where the streamed one computes."""
        from specexec.models import load_model

        return load_model("embedded", dtype="float32", device=self.device, with_tokenizer=False).model

    def bandwidth(self, streamed, plans, repeats: int) -> tuple[float, str]:
        """Bytes per second of the bound (best of ``repeats`` disk sweeps, or the median of ``repeats`` copies),
        measured with the streamed model's reader idle, and how it was measured."""
        if self.gpu:
            return h2d_bandwidth(repeats=repeats), "pinned host-to-device copy, 1 GiB"
        streamed.specexec_offload.transport.wait_idle()  # the reader's prefetch for the next pass is done
        bw, direct = disk_bandwidth(plans, repeats)
        return bw, "disk read, " + ("O_DIRECT" if direct else "buffered + FADV_DONTNEED")


class PassTimer:
    """One target pass over a random tree of ``n`` tokens after a ``prefix``-token prompt, timed as often as
    asked (the tree is rolled back after each): seconds, and seconds the disk reader spent in that pass
    (0 for a resident model, or one streamed from RAM). On a GPU a pass is timed between two
    synchronisations."""

    def __init__(self, model, n: int, prefix: int = 64):
        from specexec.runner import ModelRunner
        from specexec.tree import ancestor_matrix

        gen = torch.Generator().manual_seed(n)
        self.runner = ModelRunner(model, capacity=prefix + n + 8)
        self.runner.forward_chain(torch.randint(0, 1000, (prefix,), generator=gen), 0)
        self.runner.commit(torch.arange(prefix))
        parents = [-1] + [int(torch.randint(0, i, (), generator=gen)) for i in range(1, n)]
        anc, depth = ancestor_matrix(parents)
        self.positions = prefix + depth
        self.visible = torch.cat([torch.ones(n, prefix, dtype=torch.bool), anc], 1)
        self.tokens = torch.randint(0, 1000, (n,), generator=gen)
        streamer = getattr(model, "specexec_offload", None)
        self.reader = getattr(streamer.transport, "reader", None) if streamer is not None else None
        self.cuda = model.get_input_embeddings().weight.device.type == "cuda"

    def once(self) -> tuple[float, float]:
        read0 = self.reader.seconds if self.reader is not None else 0.0
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.runner.forward(self.tokens, self.positions, self.visible)
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        self.runner.rollback()
        return seconds, (self.reader.seconds - read0 if self.reader is not None else 0.0)


def pass_seconds(model, n: int, repeats: int, prefix: int = 64) -> tuple[float, float]:
    """Median seconds of ``repeats`` passes of a :class:`PassTimer` run back to back (after one untimed), and of
    their reads (the other benchmarks' protocol; part 1 below interleaves the models and the disk alone)."""
    timer = PassTimer(model, n, prefix)
    timer.once()
    times, reads = zip(*(timer.once() for _ in range(repeats)))
    return statistics.median(times), statistics.median(reads)


def part_one(tier: Tier, streamed, plans, sizes: list[int], repeats: int) -> None:
    """Pass time against tree size: the resident pass, the bound alone and the streamed pass in turn, ``repeats``
    rounds per size; prints a table of medians (ratios: median and range of the rounds')."""
    layer_bytes = sum(p.raw_nbytes for p in plans)
    resident = tier.resident()
    rows = []
    with torch.inference_mode():
        for n in sizes:
            timers = PassTimer(resident, n), PassTimer(streamed, n)
            timers[0].once()  # untimed
            rounds = []
            for _ in range(repeats):
                t_res = timers[0].once()[0]
                bw = tier.bandwidth(streamed, plans, 2)[0]
                timers[1].once()  # untimed: the timed pass starts as one right after a pass does
                t, t_read = timers[1].once()
                # the bound: the faster of the two times the layers' bytes took, alone or during the pass
                bound = layer_bytes / bw if tier.gpu else min(layer_bytes / bw, t_read)
                rounds.append((t_res, t, bw, bound, t_read, t / max(bound, t_res), t / max(t_read, t_res)))
            del timers
            cols = list(zip(*rounds))
            med = [statistics.median(c) for c in cols]
            rows.append((n, med, (min(cols[5]), max(cols[5])), (min(cols[6]), max(cols[6]))))
            print(f"  n={n}: {tier.resident_place} {med[0] * 1e3:.1f} ms, streamed {med[1] * 1e3:.1f} ms"
                  + ("" if tier.gpu else f" (its reads {med[4] * 1e3:.0f} ms)")
                  + f", {tier.source} alone {med[2] / 1e9:.2f} GB/s", flush=True)
    del resident
    print(f"\n(medians of {repeats} rounds; ratios: median (lowest-highest) of the rounds')")
    if tier.gpu:
        print("| tree tokens | resident on the GPU (ms) | streamed from pinned RAM (ms) | copy bandwidth (GB/s) | "
              "copy bound (ms) | streamed / max(copy bound, resident) | share of the copy bandwidth |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n, (t_res, t, bw, bound, _, ratio, _), (lo, hi), _ in rows:
            print(f"| {n} | {t_res * 1e3:.1f} | {t * 1e3:.1f} | {bw / 1e9:.1f} | {bound * 1e3:.1f} | "
                  f"{ratio:.2f}x ({lo:.2f}-{hi:.2f}) | {bound / t:.0%} |")
    else:
        print("| tree tokens | in-RAM pass (ms) | streamed from disk (ms) | disk alone (GB/s) | reads during the pass (ms) | "
              "I/O bound (ms) | streamed / max(I/O bound, in-RAM) | streamed / max(its reads, in-RAM) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, (t_res, t, bw, bound, t_read, ratio, own), (lo, hi), (olo, ohi) in rows:
            print(f"| {n} | {t_res * 1e3:.0f} | {t * 1e3:.0f} | {bw / 1e9:.2f} | {t_read * 1e3:.0f} | {bound * 1e3:.0f} | "
                  f"{ratio:.2f}x ({lo:.2f}-{hi:.2f}) | {own:.2f}x ({olo:.2f}-{ohi:.2f}) |")
        print("(I/O bound: the faster of the disk alone and the pass's own reads, per round)")
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10, help="oasst prompts (from the first)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--budgets", default="16,64,256,1024")
    ap.add_argument("--sizes", default="1,16,64,256,1024", help="tree sizes of part 1")
    ap.add_argument("--repeats", type=int, default=5,
                    help="part 1: rounds per size (a resident pass, the bound alone, a streamed pass)")
    ap.add_argument("--device-size", default="",
                    help="layer buffers (default: the tier's own: for disk as many as 512 MiB holds, up to 16; for cpu "
                         "2 GPU buffers); a list (2,8) runs part 2 with each (part 1 uses the first)")
    ap.add_argument("--draft-dtype", default="auto",
                    help="the draft's dtype (auto: the engine's default choice); a list (float32,bfloat16) runs every "
                         "drafting method with each")
    ap.add_argument("--max-n-beams", type=int, default=16, help="SpecExec: nodes expanded per draft pass")
    ap.add_argument("--max-beam-len", type=int, default=16, help="SpecExec: depth cap (draft passes per tree)")
    ap.add_argument("--max-branch-width", type=int, default=16, help="SpecExec: children per expanded node")
    ap.add_argument("--skip-passes", action="store_true", help="skip part 1")
    ap.add_argument("--skip-generation", action="store_true", help="skip part 2")
    ap.add_argument("--no-specinfer", dest="specinfer", action="store_false", help="part 2 without SpecInfer")
    ap.add_argument("--interleave", action="store_true", help="part 2: every configuration on a prompt before the next")
    ap.add_argument("--tier", choices=("disk", "cpu"), default="disk",
                    help="stream the layers from disk (computing on the CPU) or from pinned CPU RAM to a CUDA GPU")
    args = ap.parse_args()
    sizes = [int(x) for x in str(args.device_size).split(",") if x.strip()] or [None]
    if None not in sizes and min(sizes) < 1:
        ap.error("--device-size: one or more positive integers, e.g. 2 or 2,8")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    budgets = [int(x) for x in args.budgets.split(",") if x.strip()]
    if args.tier == "cpu" and not torch.cuda.is_available():
        ap.error("--tier cpu streams the layers to a CUDA GPU, and this machine has none")
    tier = Tier(args.tier)

    from specexec import SpecExecEngine
    from specexec.drafts import default_draft

    print(f"machine: {machine()}" + (f"; GPU: {torch.cuda.get_device_name()}" if tier.gpu else ""), flush=True)
    streamed = tier.load(sizes[0])
    sizes[0] = streamed.model.specexec_offload.slots  # the default, resolved
    plans = list(streamed.model.specexec_offload.plans.values())
    layer_bytes = sum(p.raw_nbytes for p in plans)
    bw, how = tier.bandwidth(streamed.model, plans, 3)
    print(f"streamed layers: {len(plans)}, {layer_bytes / 1e6:.1f} MB read per pass; {how}: "
          f"{bw / 1e9:.2f} GB/s, so the bound is {layer_bytes / bw * 1e3:.1f} ms per pass; {sizes[0]} buffers", flush=True)

    if not args.skip_passes:
        part_one(tier, streamed.model, plans, [int(x) for x in args.sizes.split(",")], args.repeats)

    if args.skip_generation:
        return
    draft_dtypes = [x.strip() for x in args.draft_dtype.split(",") if x.strip()]
    drafts = {d: default_draft(None, streamed, device=tier.device, draft_dtype=d)[0] for d in draft_dtypes}
    resolved = [next(m.parameters()).dtype for m in drafts.values()]
    if len(set(resolved)) < len(draft_dtypes):
        ap.error(f"--draft-dtype {args.draft_dtype}: two of these give the same draft dtype here ({resolved})")
    targets = {sizes[0]: streamed.model}
    for size in sizes[1:]:  # the same target streamed through more buffers, the same resident drafts
        targets[size] = tier.load(size, with_tokenizer=False).model
    engines = {(size, d): SpecExecEngine(targets[size], streamed.tokenizer, drafts[d],
                                         draft_tokenizer=streamed.tokenizer) for size in sizes for d in draft_dtypes}
    first = engines[sizes[0], draft_dtypes[0]]
    prompts = oasst_prompts(first, args.prompts)
    named = {d: str(next(m.parameters()).dtype).removeprefix("torch.") for d, m in drafts.items()}
    print(f"end to end: {len(prompts)} oasst prompts, {args.max_new_tokens} new tokens, greedy, buffers "
          f"{', '.join(map(str, sizes))}; draft in {', '.join(f'{named[d]} ({d})' for d in draft_dtypes)}", flush=True)

    def label(text: str, size: int, d: str | None = None) -> str:
        extra = [f"{size} buffers"] if len(sizes) > 1 else []
        extra += [f"draft {named[d]}"] if d and len(draft_dtypes) > 1 else []
        return ", ".join([text, *extra])

    tree = dict(max_n_beams=args.max_n_beams, max_branch_width=args.max_branch_width, max_beam_len=args.max_beam_len)
    baselines = [label("autoregressive", size) for size in sizes]
    configs = [(name, dict(method="autoregressive"), engines[size, draft_dtypes[0]])
               for name, size in zip(baselines, sizes)]
    for size in sizes:
        for d in draft_dtypes:
            for b in budgets:
                configs.append((label(f"SpecExec budget {b}", size, d), dict(method="specexec", max_budget=b, **tree),
                                engines[size, d]))
            if args.specinfer:
                configs.append((label("SpecInfer 8 x 8", size, d), dict(method="specinfer", max_n_beams=8,
                                                                         max_beam_len=8), engines[size, d]))
    if tier.gpu:  # what streaming costs: the same decoding with the whole target on the GPU
        on_gpu = SpecExecEngine(tier.resident(), streamed.tokenizer, drafts[draft_dtypes[0]],
                                draft_tokenizer=streamed.tokenizer)
        configs.append(("autoregressive, target resident on the GPU", dict(method="autoregressive"), on_gpu))
        for b in budgets[:1]:
            extra = f", draft {named[draft_dtypes[0]]}" if len(draft_dtypes) > 1 else ""
            configs.append((f"SpecExec budget {b}, target resident on the GPU{extra}",
                            dict(method="specexec", max_budget=b, **tree), on_gpu))
    runs = GreedyRuns(first, prompts, args.max_new_tokens)
    runs.run_all(configs, interleave=args.interleave)
    base = max(r.tokens_per_second for r in runs.rows if r.label in baselines)
    if tier.gpu:
        print("\n| method (target streamed from pinned RAM to the GPU) | tokens/s | vs autoregressive | "
              "tokens per target pass | seconds per iteration | of which drafting | the rest (target pass, "
              "acceptance, cache) | same tokens as autoregressive |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for r in runs.rows:
            print(f"| {r.label} | {r.tokens_per_second:.2f} | {r.tokens_per_second / base:.2f}x | "
                  f"{r.tokens_per_pass:.2f} | {r.seconds_per_pass:.4f} | {r.draft_seconds_per_pass:.4f} | "
                  f"{r.seconds_per_pass - r.draft_seconds_per_pass:.4f} | {'yes' if r.same else 'NO'} |")
        print("(vs autoregressive: against the fastest autoregressive row with the target streamed)")
        return
    print("\n| method (target streamed from disk) | tokens/s | vs autoregressive | tokens per target pass | "
          "seconds per iteration | of which drafting | of which waiting for reads | the rest (target compute) | "
          "disk busy | same tokens as autoregressive |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs.rows:
        compute = r.seconds_per_pass - r.draft_seconds_per_pass - r.wait_seconds_per_pass
        print(f"| {r.label} | {r.tokens_per_second:.2f} | {r.tokens_per_second / base:.2f}x | {r.tokens_per_pass:.2f} | "
              f"{r.seconds_per_pass:.3f} | {r.draft_seconds_per_pass:.3f} | {r.wait_seconds_per_pass:.3f} | "
              f"{compute:.3f} | {r.disk_busy:.0%} | {'yes' if r.same else 'NO'} |")
    print("(an iteration = drafting + waiting for reads + the rest: the target's compute, acceptance, cache; the "
          "waits include the prompt's pass; disk busy: share of the time the reader was reading)")
    if len(sizes) > 1:
        print("(vs autoregressive: against the fastest autoregressive row)")


if __name__ == "__main__":
    main()
