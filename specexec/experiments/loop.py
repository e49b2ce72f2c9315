"""The experiment run: every configuration of the sweep on every prompt, logged as it goes.

Order of work: flags and configurations are validated and the prompt set is resolved before any
model loads; then the models load, one untimed warm-up generation runs, and the configurations
run (the autoregressive baseline first when there is one). Each finished test is one JSONL
record at once; the summary is written at the end, after Ctrl-C, or after a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from datetime import datetime

from ..draft_vocab import head_tokens, output_vocab_size
from ..errors import ConfigError, PromptError, SpecExecError
from . import datasets as ds
from . import flags, report
from .interrupts import Interrupts

HELP = "run the paper's experiments: sweeps of tree parameters over a prompt set, with a summary table"
log = logging.getLogger("specexec.bench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_arguments(p)


class _TqdmHandler(logging.Handler):
    """Console log lines written above the progress bar, not through it."""

    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _setup_logging(args, log_path) -> list[logging.Handler]:
    level = getattr(logging, str(args.loglevel).upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f"--loglevel: unknown level {args.loglevel!r}; use DEBUG, INFO, WARNING or ERROR")
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(lambda r: r.levelno >= level or getattr(r, "always", False))
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(console)
    log.addHandler(to_file)
    return [console, to_file]


def _say(msg: str) -> None:
    """A line that always reaches stdout and the log, whatever --loglevel."""
    log.info(msg, extra={"always": True})


def _hardware(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    from ..machine import describe_cpu

    return f"CPU {describe_cpu()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def _check_models(args, device: str) -> None:
    """Refuse at once what cannot run here (before the prompt set or any model loads)."""
    if args.offload:
        from ..offload import OffloadOptions

        OffloadOptions(args.offload, args.device_size, args.keep_layers).compute_device(device)
    for flag, name in (("--model_0", args.model_0), ("--model_1", args.model_1)):
        if name and "gptq" in str(name).lower() and not device.startswith("cuda"):
            raise ConfigError(f"{flag}: {name!r} is a GPTQ-quantised model; those run only on a CUDA GPU "
                              f"and this machine has none (device {device})")


def _pick_device(args) -> tuple[str, str]:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() and args.offload != "disk" else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device!r} asked for but no CUDA device is available")
    from ..models import parse_device, parse_draft

    parse_device(device)
    parse_draft(args.model_0)
    return device, args.dtype  # "auto": decided at load (specexec.models.resolve_dtype)


def run(args) -> int:
    configs = flags.build_configs(args)
    device, dtype = _pick_device(args)
    _check_models(args, device)
    dataset = ds.resolve(args.dataset)
    prompts = dataset.prompts[args.dataset_start_index:args.dataset_start_index + args.n_tests]
    if not prompts:
        raise ConfigError(f"--dataset_start_index: {args.dataset_start_index} is past the end of "
                          f"{dataset.name!r} ({len(dataset.prompts)} prompts)")
    out = report.ExperimentLog(args.save_dir, args.exp_name)
    handlers = _setup_logging(args, out.log_path)
    try:
        return _run(args, configs, dataset, prompts, device, dtype, out)
    finally:
        out.close()
        for h in handlers:
            log.removeHandler(h)
            h.close()


def _load_engine(args, configs, device, dtype):
    from ..engine import SpecExecEngine

    only_baseline = all(c.method == "autoregressive" for c in configs)
    target = args.model_1 or "embedded"
    draft = "none" if only_baseline else args.model_0
    buffers = f"{args.device_size} buffers" if args.device_size else "buffers sized by memory"
    streamed = (f", decoder layers streamed from {'disk' if args.offload == 'disk' else 'CPU RAM'} through "
                f"{buffers}" if args.offload else "")
    log.info(f"loading target {target} and draft {draft or '(default draft of the target)'} "
             f"on {device} in {dtype}{streamed}")
    t = time.perf_counter()
    engine = SpecExecEngine.from_pretrained(target, draft, dtype=dtype, device=device, offload=args.offload,
                                            device_size=args.device_size, keep_layers=args.keep_layers,
                                            draft_vocab=args.draft_vocab, quantize=args.quantize,
                                            draft_quantize=args.draft_quantize, draft_dtype=args.draft_dtype)
    streamer = getattr(engine.target, "specexec_offload", None)
    log.info(f"models loaded in {time.perf_counter() - t:.1f} s"
             + (f" ({streamer.slots} layer buffers)" if streamer is not None else ""))
    return engine


def describe(model) -> str:
    """'llama, 30 layers, 134.5M parameters, float32' for the log and the config record."""
    if model is None:
        return "none"
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    layers = getattr(cfg, "num_hidden_layers", "?")
    streamer = getattr(model, "specexec_offload", None)
    streamed = "" if streamer is None else (
        f", {len(streamer.plans)} layers streamed from "
        f"{'disk' if getattr(streamer.options, 'mode', None) == 'disk' else 'CPU RAM'} "
        f"through {streamer.slots} buffers")
    head = "" if head_tokens(model) == output_vocab_size(model) else \
        f", head over {head_tokens(model)} of {output_vocab_size(model)} tokens"
    from ..quantize import describe as quantization

    q = quantization(model)
    weights = "" if q is None else f", weights {q}"
    count = "" if q is not None else f", {n / 1e6:.1f}M parameters"  # quantized: the tensors' sizes are packed
    dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    return f"{cfg.model_type}, {layers} layers{count}{weights}, {dtype}{head}{streamed}"


def _run(args, configs, dataset, prompts, device, dtype, out) -> int:
    import torch
    from tqdm import tqdm

    _say(f"experiment {args.exp_name}: {len(configs)} configuration(s) x {len(prompts)} prompt(s) "
         f"from {dataset.name} ({dataset.source}); logs in {out.dir}")
    engine = _load_engine(args, configs, device, dtype)
    dtype = str(engine.target.get_input_embeddings().weight.dtype).removeprefix("torch.")  # "auto" decided
    has_template = bool(getattr(engine.tokenizer, "chat_template", None))
    inputs = [ds.prepare(p, args.chat_template, has_template) for p in prompts]
    n_chat = sum(chat for _, chat in inputs)
    if args.chat_template == "none":
        _say("chat template: none (every prompt's text is fed as is)")
    else:
        _say(f"chat template: auto ({n_chat} prompt(s) wrapped in the target's chat template"
             f"{'' if has_template else ' (the target has none)'}, {len(inputs) - n_chat} fed as text; "
             "Llama-2 wrappers stripped)")
    if args.device_size is not None and not args.offload:
        log.warning(f"--device_size {args.device_size} given, but it only matters with --offload")
    hardware = _hardware(device)
    models = {"target": describe(engine.target), "draft": describe(engine.draft)}
    _say(f"device: {device} ({hardware}); dtype {dtype}; target: {models['target']}; draft: {models['draft']}")
    out.record({
        "msg_type": "config", "exp_name": args.exp_name, "argv": sys.argv[1:],
        "flags": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "methods": sorted({c.method for c in configs}), "configs": [c.label for c in configs],
        "dataset": dataset.name, "dataset_source": dataset.source,
        "prompt_ids": [p.id for p in prompts], "chat_template": args.chat_template,
        "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "models": models, "device": device, "hardware": hardware, "dtype": dtype,
        "torch": torch.__version__, "hostname": socket.gethostname(),
        "timestamp": datetime.now().isoformat(timespec="seconds"),
    })

    rows: list[dict] = []
    status = "finished"
    bar = tqdm(total=len(configs) * len(prompts), desc=args.exp_name, unit="test", file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True, leave=False)
    guard = Interrupts()
    tests: list[dict] = []
    config = None
    t_config = time.perf_counter()
    try:
        with guard, torch.inference_mode():
            # one untimed warm-up generation (lazy initialisation, allocator, caches)
            for warm_text, warm_chat in inputs:
                try:
                    engine.generate(warm_text, chat=warm_chat, config=configs[0].generation.with_(max_new_tokens=4))
                    break
                except PromptError:  # reported (and skipped) in the run itself
                    continue
            for config in configs:
                _say(f"configuration {config.label}")
                report.reset_peak_memory(device)
                tests, t_config = [], time.perf_counter()
                for prompt, (text, chat) in zip(prompts, inputs):
                    t = time.perf_counter()
                    try:
                        res = engine.generate(text, chat=chat, config=config.generation)
                    except PromptError as err:
                        log.warning(f"prompt {prompt.id} skipped: {err}")
                        with guard.deferred():
                            out.record({"msg_type": "skip", "config": config.label, "prompt_id": prompt.id,
                                        "reason": str(err)})
                            bar.update(1)
                        continue
                    rec = report.test_record(config, prompt, res, chat, report.peak_memory_gib(device),
                                             time.perf_counter() - t)
                    with guard.deferred():
                        out.record(rec)
                        tests.append(rec)
                        _say(report.test_line(rec))
                        if args.verbose:
                            _say(f"    {res.text!r}")
                        bar.update(1)
                with guard.deferred():
                    rows.append(_row(config, tests, t_config, device))
                    tests = []
                    r = rows[-1]
                    _say(f"[{config.label}] gen_rate {r['gen_rate']:.2f}, gen_speed {r['gen_speed']:.2f} "
                         f"tokens/s, {r['exp_time']:.1f} s")
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception:
        status = "crashed"
        raise
    finally:
        bar.close()
        if tests and config is not None:  # the configuration that was cut short
            rows.append(_row(config, tests, t_config, device, complete=False))
        _finish(args, rows, out, status, hardware)
    return 130 if status == "interrupted" else 0


def _row(config, tests, t_config, device, complete=True) -> dict:
    row = report.summarize(config.params(), tests, time.perf_counter() - t_config, report.peak_memory_gib(device))
    row["config"] = config.label
    if not complete:
        row["complete"] = False
    return row


def _finish(args, rows, out, status, hardware) -> None:
    """The summary of whatever finished: JSONL rows, summary.csv, the table, the plot."""
    report.add_speedup(rows)
    for row in rows:
        out.record(report.jsonable_row(row))
    if status != "finished":
        _say(f"run {status}: the summary covers the tests that finished")
    if not rows:
        _say(f"no test finished; records so far are in {out.jsonl_path}")
        out.record({"msg_type": "end", "status": status})
        return
    out.write_csv(rows)
    line = "-" * 100
    _say(f"{line}\nSUMMARY {args.exp_name} ({status}; {hardware}; temperature {args.temperature}, "
         f"top_p {args.top_p}, max_new_tokens {args.max_new_tokens})\n{line}\n"
         f"{report.format_table(rows)}\n{line}")
    if any("speedup" in r for r in rows):
        _say("speedup = gen_speed / the autoregressive baseline's gen_speed in this run, same target and "
             "settings (below 1: slower than plain decoding here; SpecExec pays where a target pass costs "
             "about the same for one token as for a tree, see docs/offload.md)")
    if not args.no_plot:
        try:
            from .plot import plot_acceptance, plot_rows

            plot_rows(rows, out.plot_path, title=args.exp_name)
            _say(f"plot: {out.plot_path}")
            accepted = plot_acceptance(rows, out.dir / "acceptance.png", title=f"{args.exp_name}: acceptance by depth")
            if accepted:
                _say(f"acceptance by depth: {accepted}")
        except Exception as err:  # noqa: BLE001 - a failed plot must not hide the results
            log.warning(f"could not draw the plot: {err}")
    _say(f"logs: {out.log_path}, {out.jsonl_path}, {out.csv_path}")
    out.record({"msg_type": "end", "status": status})


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``run_exp.py`` and ``specexec bench``: the same program."""
    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SpecExecError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
