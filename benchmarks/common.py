"""What the end-to-end benchmarks share: the machine's name, and greedy decoding of a prompt set
timed side by side with every row checked against the autoregressive row's tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def machine() -> str:
    from specexec.machine import describe_cpu

    cpu = describe_cpu()
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def oasst_prompts(engine, n: int) -> list[list[int]]:
    """The first ``n`` oasst prompts, in the target's chat template where it has one."""
    from specexec.experiments.datasets import prepare, resolve

    has_template = bool(getattr(engine.tokenizer, "chat_template", None))
    out = []
    for p in resolve("oasst").prompts[:n]:
        text, chat = prepare(p, "auto", has_template)
        out.append(engine.encode(text, chat=chat))
    return out


@dataclass
class Row:
    label: str
    tokens_per_second: float
    tokens_per_pass: float
    seconds_per_pass: float
    same: bool  # every prompt's tokens equal the autoregressive row's
    budgets: list  # the budgets the passes used (auto)
    draft_seconds_per_pass: float = 0.0  # growing the tree, per target pass
    wait_seconds_per_pass: float = 0.0  # a streamed target: blocked on layer reads, per target pass
    disk_busy: float = 0.0  # a target streamed from disk: share of the time its reader was reading


class GreedyRuns:
    """Runs configurations over the same prompts; the first run is the reference (autoregressive)."""

    def __init__(self, engine, prompts: list[list[int]], max_new_tokens: int):
        self.engine, self.prompts, self.max_new_tokens = engine, prompts, max_new_tokens
        self.reference: dict[int, list[int]] = {}
        self.outputs: dict[tuple[str, int], list[int]] = {}  # (label, prompt index) -> tokens
        self.rows: list[Row] = []

    def run(self, label: str, **settings) -> Row:
        return self.run_all([(label, settings)])[0]

    def run_all(self, configs: list[tuple], interleave: bool = False) -> list[Row]:
        """Run each (label, settings) over the prompts; with ``interleave``, prompt by prompt.

        A configuration may name its own engine as a third item, (label, settings, engine) (the
        same target loaded another way, with the same tokenizer); the others use ``self.engine``.
        Interleaved, every prompt goes through every configuration before the next prompt starts,
        so a machine whose speed drifts during the run slows every row alike.
        """
        configs = [(c[0], c[1], c[2] if len(c) > 2 else self.engine) for c in configs]
        totals = {label: dict(tokens=0, passes=0, seconds=0.0, drafting=0.0, same=True, budgets=[], waiting=0.0,
                              reading=0.0, wall=0.0) for label, _, _ in configs}

        def one(i, ids, label, settings, engine):
            streamer = getattr(engine.target, "specexec_offload", None)
            reader = getattr(streamer.transport, "reader", None) if streamer is not None else None
            wait0, read0 = (streamer.wait_seconds if streamer else 0.0), (reader.seconds if reader else 0.0)
            res = engine.generate(ids, max_new_tokens=self.max_new_tokens, temperature=0.0, **settings)
            t = totals[label]
            self.outputs[label, i] = res.token_ids
            # the prompt's own pass is in these three (its reads and waits cannot be told apart)
            t["waiting"] += (streamer.wait_seconds - wait0) if streamer else 0.0
            t["reading"] += (reader.seconds - read0) if reader else 0.0  # the RAM tier reads only when loading
            t["wall"] += res.stats.seconds + res.stats.prefill_seconds
            t["tokens"] += res.stats.new_tokens
            t["passes"] += res.stats.target_passes
            t["seconds"] += res.stats.seconds
            t["drafting"] += res.stats.draft_seconds
            t["budgets"] += res.stats.budgets
            if not self.reference.get(i):
                self.reference[i] = res.token_ids
            else:
                t["same"] &= res.token_ids == self.reference[i]

        with torch.inference_mode():
            for _, settings, engine in configs:
                engine.generate(self.prompts[0], max_new_tokens=4, temperature=0.0, **settings)  # warm-up
            if interleave:
                for i, ids in enumerate(self.prompts):
                    for label, settings, engine in configs:
                        one(i, ids, label, settings, engine)
            else:
                for label, settings, engine in configs:
                    for i, ids in enumerate(self.prompts):
                        one(i, ids, label, settings, engine)
        rows = []
        for label, _, _ in configs:
            t = totals[label]
            row = Row(label, t["tokens"] / t["seconds"], t["tokens"] / t["passes"], t["seconds"] / t["passes"],
                      t["same"], t["budgets"], t["drafting"] / t["passes"], t["waiting"] / t["passes"],
                      t["reading"] / t["wall"])
            self.rows.append(row)
            rows.append(row)
            print(f"  {label:<24} {row.tokens_per_second:7.2f} tok/s  {row.tokens_per_pass:5.2f} tok/pass  "
                  f"{row.seconds_per_pass:6.3f} s/iteration  same tokens as the first row: {row.same}", flush=True)
        return rows
