"""Flags of the experiment runner (those of the SpecExec paper's ``run_exp.py``) and sweep parsing.

Everything here runs before any model is loaded: a bad flag fails with a message naming it.
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass

from ..config import AUTO, GenerationConfig, SamplingConfig
from ..draft_vocab import draft_vocab_value
from ..drafts import DRAFT_DTYPES
from ..errors import ConfigError

# the paper's generator class names (and their aliases) -> our methods
GEN_TYPES = {
    "specexecbase": "specexec", "specexec": "specexec", "sx": "specexec", "sx_base": "specexec",
    "spec_exec_base": "specexec", "base": "specexec",
    "si": "specinfer", "specinfer": "specinfer", "spec_infer": "specinfer",
    "chain": "chain",
    "autoregressive": "autoregressive", "ar": "autoregressive", "zero": "autoregressive",
}
# which sweepable flags a method uses (the others are shown as '-' in the summary)
SWEEPS = ("max_n_beams", "max_beam_len", "max_budget", "min_log_prob", "max_branch_width")
USES = {
    "specexec": set(SWEEPS),
    "specinfer": {"max_n_beams", "max_beam_len"},
    "chain": {"max_beam_len"},
    "autoregressive": set(),
}
FLAG_NAMES = {
    "max_n_beams": "-b/--max_n_beams", "max_beam_len": "-m/--max_beam_len", "max_budget": "--max_budget",
    "min_log_prob": "--min_log_prob", "max_branch_width": "--max_branch_width",
}
DEFAULTS = {"max_n_beams": "128", "max_beam_len": "32", "max_budget": "128", "min_log_prob": "None",
            "max_branch_width": "32"}
PAPER_DRAFT = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
PAPER_TARGET = "meta-llama/Llama-2-7b-chat-hf"


def _flag(p: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """Add a flag under its paper (underscore) names and their dashed forms."""
    extra = [n.replace("_", "-") for n in names if n.startswith("--") and "_" in n]
    p.add_argument(*names, *extra, **kwargs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment")
    _flag(g, "--exp_name", default="experiment", help="experiment name: logs go to SAVE_DIR/EXP_NAME/")
    _flag(g, "--save_dir", default="logs", help="experiments directory (default: logs)")
    _flag(g, "-d", "--dataset", default=None,
          help="prompt set: oasst, c4, wikitext, mtbench, a .json/.jsonl file, or 'embedded' "
               "(default: the embedded prompt set)")
    _flag(g, "--dataset_start_index", type=int, default=0, help="index of the first prompt used (default 0)")
    _flag(g, "--n_tests", type=int, default=10, help="prompts per configuration (default 10)")
    _flag(g, "--chat_template", default="auto", choices=("auto", "none"),
          help="auto: strip a prompt's own Llama-2 chat wrapper and apply the target's chat template to chat "
               "prompts; none: feed each prompt's text as is")
    m = p.add_argument_group("models")
    _flag(m, "--model_0", default=None, help="draft model: hub id, folder, .gguf, 'self', 'truncated:K' "
                                               "(default: the default draft of the target)")
    _flag(m, "--draft_vocab", type=draft_vocab_value, default=None, metavar="K|full",
          help="a distilled draft's output head: its K most frequent tokens, or 'full' (default: the draft's own K)")
    _flag(m, "--model_1", default=None, help="target model: hub id, folder, .gguf (default: the embedded model)")
    _flag(m, "--dtype", default="auto", help="auto (bfloat16 for a bfloat16 checkpoint on a CPU with native bfloat16, float16 on CUDA, "
               "else float32), float32, bfloat16, float16")
    _flag(m, "--device", default=None, help="cuda if available, else cpu")
    _flag(m, "--quantize", default=None, choices=("int8", "int4"),
          help="quantize the target's weights as they load: int8 (torchao) or int4 (bitsandbytes NF4)")
    _flag(m, "--draft_quantize", default=None, choices=("int8", "int4"), help="quantize the draft's weights")
    _flag(m, "--draft_dtype", default="auto", choices=DRAFT_DTYPES,
          help="the dtype the draft computes in; auto: bfloat16 for a float32 target on a CPU with native "
               "bfloat16, else --dtype")
    _flag(m, "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    _flag(m, "-o", "--offload", nargs="?", const="cpu", default=None, choices=("cpu", "disk"),
          help="stream the target's decoder layers: bare or 'cpu' = from pinned CPU RAM to a CUDA GPU (the "
               "paper's setting); 'disk' = from the safetensors files, computed on the CPU (docs/offload.md)")
    _flag(m, "--device_size", type=int, default=None,
          help="layer buffers in rotation when offloading (default: 2 for --offload cpu; for --offload disk "
               "as many as 512 MiB holds, 2 to 16)")
    _flag(m, "--keep_layers", type=int, default=0,
          help="when offloading: the first K decoder layers stay resident (default 0)")
    d = p.add_argument_group("decoding (comma lists sweep: --max_budget='16, 32, 64')")
    _flag(d, "-g", "--gen_type", default=None,
          help="SpecExecBase (default), SI (SpecInfer), chain, or autoregressive")
    _flag(d, "--temperature", type=float, default=1.0, help="sampling temperature, 0 = greedy (default 1.0)")
    _flag(d, "--top_p", type=float, default=1.0, help="top-p (default 1.0)")
    _flag(d, "-t", "--temp", default=None, help="temperature and top_p as 4 digits: 0609 = 0.6 and 0.9")
    _flag(d, "-b", "--max_n_beams", "--n_beams", default=DEFAULTS["max_n_beams"],
          help="nodes expanded per draft pass; SpecInfer chains (default 128; sweeps)")
    _flag(d, "-m", "--max_beam_len", default=DEFAULTS["max_beam_len"],
          help="depth cap (draft passes); chain length (default 32; sweeps)")
    _flag(d, "--max_budget", default=DEFAULTS["max_budget"], help="SpecExec: draft tokens per tree, or 'auto' (chosen per pass for this machine; "
          "docs/budget.md) (default 128; sweeps)")
    _flag(d, "--max_branch_width", default=DEFAULTS["max_branch_width"],
          help="SpecExec: children considered per node (default 32; sweeps)")
    _flag(d, "--min_log_prob", default=DEFAULTS["min_log_prob"],
          help="SpecExec: lowest cumulative draft log-prob kept (default None; sweeps)")
    _flag(d, "--max_new_tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    _flag(d, "--draft_temperature", type=float, default=None, help="SpecInfer/chain draft temperature")
    _flag(d, "--seed", type=int, default=0)
    _flag(d, "--zero", action="store_true",
          help="autoregressive baseline: alone, the only run (as in the paper); with -g, run as well and "
               "add a speedup column")
    _flag(d, "--baseline", action="store_true", help="also run the autoregressive baseline; adds a speedup column")
    o = p.add_argument_group("output")
    _flag(o, "-v", "--verbose", action="store_true", help="also show each generated text")
    _flag(o, "--loglevel", default="INFO", help="console log level (default INFO)")
    _flag(o, "--no_progress", action="store_true", help="no progress bar")
    _flag(o, "--no_plot", action="store_true", help="do not draw the plot at the end")


def budget_item(text: str) -> int | str:
    """One --max_budget item: an integer or 'auto'."""
    return AUTO if text.lower() == AUTO else int(text)


def parse_sweep(value, flag: str, kind=int) -> list:
    """``"16, 32,64"`` -> ``[16, 32, 64]``; ``None``/``"None"`` -> ``[None]``. Order kept, repeats dropped."""
    if value is None:
        return [None]
    if isinstance(value, (int, float)):
        value = str(value)
    out: list = []
    for piece in str(value).split(","):
        s = piece.strip()
        if not s:
            raise ConfigError(f"{flag}: empty item in {value!r}")
        if s.lower() == "none":
            v = None
        else:
            try:
                v = kind(s)
            except ValueError:
                what = {int: "an integer", float: "a number"}.get(kind, "an integer or 'auto'")
                raise ConfigError(f"{flag}: {s!r} is not {what} (in {value!r})") from None
            if kind is float and math.isnan(v):
                raise ConfigError(f"{flag}: {s!r} is not a number")
        if v not in out:
            out.append(v)
    return out


def parse_temp(temp: str) -> tuple[float, float]:
    """The paper's ``-t`` shorthand: ``0609`` -> temperature 0.6, top_p 0.9; ``1010`` -> 1.0, 1.0."""
    t = str(temp).strip()
    if len(t) != 4 or not t.isdigit():
        raise ConfigError(f"-t/--temp: expected 4 digits like 0609 (temperature 0.6, top_p 0.9), got {temp!r}")
    return float(f"{t[0]}.{t[1]}"), float(f"{t[2]}.{t[3]}")


def resolve_methods(args) -> list[str]:
    """The methods this run measures, baseline first when there is one."""
    if args.gen_type is None:
        methods = ["autoregressive"] if args.zero else ["specexec"]
    else:
        key = str(args.gen_type).strip().lower()
        if key not in GEN_TYPES:
            raise ConfigError(f"-g/--gen_type: unknown generator {args.gen_type!r}; choose SpecExecBase, SI, "
                              "chain or autoregressive")
        methods = [GEN_TYPES[key]]
    if (args.zero or args.baseline) and "autoregressive" not in methods:
        methods.insert(0, "autoregressive")
    return methods


@dataclass(frozen=True)
class RunConfig:
    """One configuration of the sweep: a method and the tree parameters it uses (others None)."""

    method: str
    max_n_beams: int | None
    max_beam_len: int | None
    max_budget: int | str | None
    min_log_prob: float | None
    max_branch_width: int | None
    generation: GenerationConfig

    @property
    def label(self) -> str:
        short = {"specexec": "SX", "specinfer": "SI", "chain": "chain", "autoregressive": "AR"}[self.method]
        parts = [short]
        for name, tag in (("max_n_beams", "b"), ("max_beam_len", "h"), ("max_budget", "B"),
                          ("max_branch_width", "w"), ("min_log_prob", "lp")):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{tag}{v:g}" if isinstance(v, float) else f"{tag}{v}")
        return " ".join(parts)

    def params(self) -> dict:
        return {"method": self.method, "max_n_beams": self.max_n_beams, "max_beam_len": self.max_beam_len,
                "max_budget": self.max_budget, "min_log_prob": self.min_log_prob,
                "max_branch_width": self.max_branch_width}


def build_configs(args) -> list[RunConfig]:
    """All configurations of the run (Cartesian product of the sweeps per method), validated."""
    if args.temp is not None:
        args.temperature, args.top_p = parse_temp(args.temp)
    for name, flag in (("n_tests", "--n_tests"), ("max_new_tokens", "--max_new_tokens")):
        if getattr(args, name) < 1:
            raise ConfigError(f"{flag} must be at least 1, got {getattr(args, name)}")
    if args.dataset_start_index < 0:
        raise ConfigError(f"--dataset_start_index must be >= 0, got {args.dataset_start_index}")
    try:
        sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p)
    except ConfigError as err:
        raise ConfigError(f"--temperature/--top_p: {err}") from None
    kinds = {"min_log_prob": float, "max_budget": budget_item}
    sweeps = {name: parse_sweep(getattr(args, name), FLAG_NAMES[name], kinds.get(name, int)) for name in SWEEPS}
    for name, values in sweeps.items():
        if name != "min_log_prob" and None in values:  # 'None' for a size means its default
            values[:] = [v for v in values if v is not None] or [int(DEFAULTS[name])]
    configs: list[RunConfig] = []
    for method in resolve_methods(args):
        used = [name for name in SWEEPS if name in USES[method]]
        grids = [sweeps[name] if name in used else [None] for name in SWEEPS]
        for combo in itertools.product(*grids):
            values = dict(zip(SWEEPS, combo))
            gen_fields = {name: values[name] for name in ("max_n_beams", "max_beam_len", "max_budget",
                                                          "max_branch_width") if values[name] is not None}
            try:
                gen = GenerationConfig(method=method, max_new_tokens=args.max_new_tokens, sampling=sampling,
                                       min_log_prob=values["min_log_prob"],
                                       draft_temperature=args.draft_temperature, seed=args.seed, **gen_fields)
            except ConfigError as err:
                raise ConfigError(f"{_flag_of(str(err))}{err}") from None
            configs.append(RunConfig(method=method, generation=gen, **values))
    return configs


def _flag_of(message: str) -> str:
    for name, flag in {**FLAG_NAMES, "draft_temperature": "--draft_temperature"}.items():
        if message.startswith(name):
            return f"{flag}: "
    return ""
