"""What a run writes: one record per test, one summary row per configuration, the table.

Columns of the summary (the paper's, one row per configuration; sums run over the tests):

- ``beams max_h budget minLP branch``: the configuration ('-' where the method has no such knob)
- ``t0`` / ``t1``: seconds per iteration growing the tree (draft) / verifying (target pass,
  acceptance, cache update): total draft (verify) seconds / total target passes
- ``tree_h`` / ``tree_size`` / ``min_CLP``: mean tree depth, draft tokens per tree, and lowest
  cumulative draft log-prob kept, over all iterations
- ``exp_time``: wall seconds of the configuration (prefill and everything else included)
- ``gen_rate``: new tokens / target passes; ``gen_speed``: new tokens / decoding seconds
  (prefill excluded); ``ttft``: mean seconds to the first token (prefill + first iteration)
- ``mem_use``: peak accelerator memory in GiB (CUDA), else the process's peak resident memory
- ``speedup``: gen_speed / the autoregressive baseline's gen_speed in the same run
- ``reach`` (JSONL only; the acceptance plot): the share of target passes that accepted at least
  k draft tokens, for k = 1, 2, ...
- ``chosen``: with ``--max_budget auto``, the budgets its passes used, most used first, with
  their shares of the passes (``AR``: a pass with no tree)
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path

import pandas as pd

COLUMNS = ["method", "beams", "max_h", "budget", "minLP", "branch", "t0", "t1", "tree_h", "tree_size",
           "min_CLP", "exp_time", "gen_rate", "gen_speed", "mem_use"]
EXTRA = ["ttft", "tests", "new_tokens", "chosen"]
INTEGER = ("beams", "max_h", "branch", "tests", "new_tokens")
RENAMES = {"max_n_beams": "beams", "max_beam_len": "max_h", "max_budget": "budget", "min_log_prob": "minLP",
           "max_branch_width": "branch"}
ROUNDING = {"t0": 4, "t1": 4, "tree_h": 1, "tree_size": 1, "min_CLP": 2, "exp_time": 2, "gen_rate": 2,
            "gen_speed": 3, "mem_use": 2, "ttft": 3, "speedup": 2}


# ---------------------------------------------------------------- memory
def reset_peak_memory(device) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float:
    """Peak CUDA memory allocated since the last reset, else the process's peak resident memory."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


# ---------------------------------------------------------------- per test
def test_record(config, prompt, result, chat: bool, mem_use: float, wall: float) -> dict:
    """The JSONL record of one test: configuration, prompt id, tokens, text, every statistic."""
    s = result.stats
    return {
        "msg_type": "test", "config": config.label, **config.params(),
        "prompt_id": prompt.id, "chat": chat, "prompt_tokens": len(result.prompt_token_ids),
        "new_tokens": s.new_tokens, "target_passes": s.target_passes, "draft_passes": s.draft_passes,
        "tokens_per_pass": round(s.tokens_per_pass, 4), "seconds": s.seconds,
        "tokens_per_second": round(s.tokens_per_second, 4), "prefill_seconds": s.prefill_seconds,
        "first_token_seconds": s.first_token_seconds, "draft_seconds": s.draft_seconds,
        "target_seconds": s.target_seconds, "draft_forward_seconds": s.draft_forward_seconds,
        "target_forward_seconds": s.target_forward_seconds, "stop_reason": s.stop_reason,
        "accepted_per_pass": s.accepted_per_pass, "tree_sizes": s.tree_sizes, "tree_depths": s.tree_depths,
        "min_log_probs": s.min_log_probs, "iteration_seconds": s.iteration_seconds, "budgets": s.budgets,
        "wall_seconds": wall, "mem_use": mem_use, "token_ids": result.token_ids, "text": result.text,
    }


def test_line(rec: dict) -> str:
    return (f"[{rec['config']}] prompt {rec['prompt_id']}: {rec['new_tokens']} new tokens, "
            f"{rec['target_passes']} target passes, {rec['tokens_per_pass']:.2f} tokens/pass, "
            f"{rec['seconds']:.2f} s, {rec['tokens_per_second']:.2f} tokens/s")


# ---------------------------------------------------------------- per configuration
def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def summarize(config_params: dict, tests: list[dict], exp_time: float, mem_use: float) -> dict:
    """One summary row from a configuration's test records (see the module docstring)."""
    new = sum(t["new_tokens"] for t in tests)
    passes = sum(t["target_passes"] for t in tests)
    seconds = sum(t["seconds"] for t in tests)
    sizes = [x for t in tests for x in t["tree_sizes"]]
    depths = [x for t in tests for x in t["tree_depths"]]
    clps = [lp for t in tests for lp, n in zip(t["min_log_probs"], t["tree_sizes"]) if n > 0]
    row = {"msg_type": "summary", **{RENAMES.get(k, k): v for k, v in config_params.items()}}
    row.update({
        "t0": sum(t["draft_seconds"] for t in tests) / passes if passes else float("nan"),
        "t1": sum(t["target_seconds"] for t in tests) / passes if passes else float("nan"),
        "tree_h": _mean(depths), "tree_size": _mean(sizes), "min_CLP": _mean(clps),
        "exp_time": exp_time,
        "gen_rate": new / passes if passes else float("nan"),
        "gen_speed": new / seconds if seconds > 0 else float("nan"),
        "mem_use": mem_use,
        "ttft": _mean(t["first_token_seconds"] for t in tests),
        "tests": len(tests), "new_tokens": new,
    })
    drafted = [a - 1 for t in tests for a in t["accepted_per_pass"]]  # accepted draft tokens per pass
    deepest = max(drafted, default=0)
    row["reach"] = [sum(a >= k for a in drafted) / len(drafted) for k in range(1, deepest + 1)]
    if config_params.get("max_budget") == "auto":
        row["chosen"] = chosen_budgets([b for t in tests for b in t.get("budgets", [])])
    return row


def chosen_budgets(budgets: list[int], top: int = 3) -> str:
    """``"AR 60%, 64 30%, 128 10%"``: the most used budgets and their shares of the passes."""
    from collections import Counter

    if not budgets:
        return "-"
    counts = Counter(budgets).most_common(top)
    return ", ".join(f"{'AR' if b == 0 else b} {100 * n / len(budgets):.0f}%" for b, n in counts)


def add_speedup(rows: list[dict]) -> None:
    """A ``speedup`` column when the autoregressive baseline is among the rows."""
    base = [r["gen_speed"] for r in rows if r["method"] == "autoregressive"]
    if all(r["method"] == "autoregressive" for r in rows) or not base or not base[0] or math.isnan(base[0]):
        return
    for r in rows:
        r["speedup"] = r["gen_speed"] / base[0]


def table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    cols = COLUMNS + (["speedup"] if "speedup" in df.columns else []) + EXTRA
    df = df[[c for c in cols if c in df.columns]].copy()
    for col in df.columns:
        if col in INTEGER:
            df[col] = pd.to_numeric(df[col]).astype("Int64")  # None (no such knob) -> <NA>, shown as '-'
        elif col == "budget":  # integers, 'auto', or None (no such knob)
            df[col] = pd.Series([None if _missing(v) else (v if v == "auto" else int(v)) for v in df[col]],
                                dtype=object, index=df.index)
        elif col not in ("method", "chosen"):
            df[col] = pd.to_numeric(df[col])
    for col, digits in ROUNDING.items():
        if col in df.columns:
            df[col] = df[col].astype(float).round(digits)
    return df


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def jsonable_row(row: dict) -> dict:
    """NaN (no value) becomes null, so that the JSONL stays strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def format_table(rows: list[dict]) -> str:
    df = table(rows)
    for col in df.columns:
        if col in INTEGER:
            df[col] = [("-" if pd.isna(v) else str(int(v))) for v in df[col]]
        elif col == "budget":
            df[col] = ["-" if _missing(v) else str(v) for v in df[col]]
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        return df.to_string(index=False, na_rep="-")


# ---------------------------------------------------------------- files
class ExperimentLog:
    """``run.log`` (human-readable), ``results.jsonl`` (every record) and ``summary.csv`` in one folder.

    Every JSONL record is written with one ``write`` and flushed, so a run stopped at any point
    leaves a file of complete lines.
    """

    def __init__(self, save_dir: str | os.PathLike, exp_name: str):
        base = Path(save_dir) / exp_name
        path, n = base, 1
        while (path / "results.jsonl").exists():  # never mix two runs in one folder
            n += 1
            path = base.with_name(f"{exp_name}_{n}")
        self.dir = path
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.dir / "results.jsonl"
        self.log_path = self.dir / "run.log"
        self.csv_path = self.dir / "summary.csv"
        self.plot_path = self.dir / "plot.png"
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")

    def record(self, rec: dict) -> None:
        self._jsonl.write(json.dumps(rec, ensure_ascii=False, default=_jsonable) + "\n")
        self._jsonl.flush()

    def write_csv(self, rows: list[dict]) -> None:
        table(rows).to_csv(self.csv_path, index=False)

    def close(self) -> None:
        self._jsonl.close()


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a results.jsonl (a torn last line from a killed run is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
