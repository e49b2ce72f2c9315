"""``specexec distill``: build a draft from a target and train it to match the target."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HELP = "distill a small draft model from a target (self-distillation on its own responses)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="embedded", help="target model: hub id, folder, .gguf or 'embedded'")
    p.add_argument("--out", required=True, help="output folder: a Hugging Face model folder, plus data/ and "
                                                "checkpoint.pt while training")
    design = p.add_mutually_exclusive_group()
    design.add_argument("--layers", type=int, default=None, help="draft = the target's first K layers (default 2)")
    design.add_argument("--layer-ids", default=None, help="draft = these target layers, e.g. 0,1,29")
    design.add_argument("--config", default=None, help="draft = this Hugging Face config.json (same vocabulary); "
                                                       "tensors matching the target's are copied")
    design.add_argument("--init", default=None, help="start from this draft: a folder (an earlier distill output), "
                                                     "or 'shipped' (the embedded target's shipped draft)")
    p.add_argument("--add-layer", action="append", default=None, metavar="POS:LAYER",
                   help="grow the draft: insert a copy of target layer LAYER at position POS, its output "
                        "projections zeroed so the draft starts out computing what it did (repeatable)")
    p.add_argument("--data", action="append", default=None,
                   help="training source, repeatable: sharegpt[:N|:A-B] and prompts:PATH[:A-B] (the target answers), "
                        "sharegpt-chat[:N|:A-B] and text:PATH (used as is), shards:DIR (the data/ folder "
                        "of an earlier run); default: sharegpt:2000")
    p.add_argument("--steps", type=int, default=1000, help="training steps; 0 with --init: no training (e.g. only "
                                                           "--draft-vocab)")
    p.add_argument("--draft-vocab", type=int, default=None, metavar="K",
                   help="give the draft a reduced output head: the K tokens the target is most expected to "
                        "produce on the teacher data (ranking saved as draft_vocab.json; docs/draft.md)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=512, help="longest training sequence (tokens)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="target and draft weights (float32 default)")
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast of the draft's passes")
    p.add_argument("--top-k", type=int, default=32, help="teacher log-probs kept per token")
    p.add_argument("--gen-max-new-tokens", type=int, default=128, help="length of the target's responses")
    p.add_argument("--gen-temperature", type=float, default=0.0, help="0: greedy responses (default)")
    p.add_argument("--gen-sample-tokens", type=int, default=0, metavar="N",
                   help="with --gen-temperature: sample only the first N tokens of each response, then "
                        "continue greedily (greedy-style answers from varied starts); 0: sample throughout")
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-fraction", type=float, default=0.03, help="share of examples held out to evaluate")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data-only", action="store_true", help="build the teacher data and stop")
    p.add_argument("--max-shards", type=int, default=None, help="build only the first N data shards")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")


def _held_out_search(specs: list[str]) -> list[Path]:
    from ..distill.data import parse_source

    folders = {Path.cwd().parent / "shared" / "datasets", Path.cwd() / "shared" / "datasets"}
    if os.environ.get("SPECEXEC_DATASETS"):
        folders.add(Path(os.environ["SPECEXEC_DATASETS"]))
    for spec in specs:
        source = parse_source(spec)
        if source.path:
            folders.add(Path(source.path).resolve().parent)
    return sorted(f for f in folders if f.is_dir())


def run(args) -> int:
    import torch

    from ..distill.dataset import build, load_examples
    from ..distill.student import build_student, freeze_shared, insert_layers, parse_insertions
    from ..distill.train import TrainConfig, train
    from ..errors import ConfigError
    from ..models import eos_token_ids, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.data or ["sharegpt:2000"]
    for name in ("batch_size", "seq_len", "top_k", "gen_batch_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if args.steps < 0 or (args.steps == 0 and not args.init):
        raise ConfigError("--steps must be positive (0, no training, only with --init)")
    if args.draft_vocab is not None and args.draft_vocab <= 0:
        raise ConfigError("--draft-vocab must be a positive number of tokens")
    if not args.gen_temperature >= 0:
        raise ConfigError("--gen-temperature must be 0 (greedy) or more")
    if args.gen_sample_tokens < 0:
        raise ConfigError("--gen-sample-tokens must be 0 or more")
    if args.gen_sample_tokens and args.gen_temperature <= 0:
        raise ConfigError("--gen-sample-tokens needs --gen-temperature above 0 (greedy answers sample nothing)")
    insertions = parse_insertions(args.add_layer)
    out = Path(args.out)
    if (out / "checkpoint.pt").exists() and not args.resume:
        raise ConfigError(f"{out} holds a checkpoint: pass --resume to continue it, or choose another --out")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup=args.warmup, seed=args.seed, eval_every=args.eval_every, save_every=args.save_every,
                      amp=args.amp)
    log_path = out / "distill_log.txt"
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    log("command: specexec distill " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["distill"] else sys.argv[1:]))
    torch.manual_seed(args.seed)
    loaded = load_model(args.target, dtype=args.dtype, device=args.device)
    target, tokenizer = loaded.model, loaded.tokenizer
    for p in target.parameters():
        p.requires_grad_(False)
    eos = eos_token_ids(target, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    t0 = time.perf_counter()
    shards = build(target, tokenizer, specs, out / "data", seed=args.seed, k=args.top_k,
                   batch_size=args.gen_batch_size, max_prompt_tokens=args.max_prompt_tokens,
                   max_new_tokens=args.gen_max_new_tokens, temperature=args.gen_temperature, seq_len=args.seq_len,
                   held_out_search=_held_out_search(specs), eos_ids=eos, pad_id=pad,
                   max_shards=args.max_shards, log=log, progress=not args.no_progress,
                   sample_tokens=args.gen_sample_tokens)
    for spec in specs:  # teacher data built by earlier runs
        if spec.startswith("shards:"):
            shards += sorted(Path(spec.split(":", 1)[1]).glob("shard-*.pt"))
    examples = load_examples(shards)
    n_tokens = sum(len(e.top_ids) for e in examples)
    log(f"data: {len(examples)} examples, {n_tokens} scored tokens ({time.perf_counter() - t0:.0f} s)")
    if args.data_only:
        return 0
    if len(examples) < 2:
        raise ConfigError("too little training data: add --data sources")
    n_eval = max(1, int(len(examples) * args.eval_fraction))
    eval_examples, train_examples = examples[:n_eval], examples[n_eval:]

    layer_ids = [int(x) for x in args.layer_ids.split(",")] if args.layer_ids else None
    if args.init == "shipped":
        from ..distill.shipped import load_shipped_draft

        student = load_shipped_draft(target)
        freeze_shared(student)
    elif args.init:
        student = load_model(args.init, dtype=args.dtype, device=args.device, with_tokenizer=False).model
        if not torch.equal(student.get_input_embeddings().weight, target.get_input_embeddings().weight):
            raise ConfigError(f"--init {args.init} does not share the target's embeddings")
        freeze_shared(student)
    else:
        student = build_student(target, layers=args.layers, layer_ids=layer_ids, config_path=args.config)
    student = insert_layers(student, target, insertions)
    n_train = sum(p.numel() for p in student.parameters() if p.requires_grad)
    trained = f"{n_train / 1e6:.2f} M trained parameters" if args.steps else "no training (--steps 0)"
    log(f"draft: {student.config.num_hidden_layers} layers, {trained}; "
        f"train {len(train_examples)} examples, eval {len(eval_examples)}")
    t1 = time.perf_counter()
    records = train(student, train_examples, eval_examples, out, cfg, resume=args.resume, log=log,
                    progress=not args.no_progress) if args.steps else []
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    vocab = save_draft_vocab(args, student, target, examples, eval_examples, out, cfg, log)
    evals = [r for r in records if "eval" in r]
    summary = {"target": loaded.name, "data": specs, "examples": len(examples), "scored_tokens": n_tokens,
               "train": vars(cfg) if not hasattr(cfg, "__dataclass_fields__") else cfg.__dict__,
               "draft": args.init or args.config or layer_ids or list(range(args.layers or 2)),
               "added_layers": args.add_layer or [], "draft_vocab": vocab,
               "train_seconds_this_run": round(time.perf_counter() - t1, 1),
               "first_eval": evals[0] if evals else None, "final_eval": evals[-1] if evals else None,
               "loss_every_50_steps": [(r["step"], r["loss"]) for r in records if r["step"] % 50 == 0]}
    (out / "distill_summary.json").write_text(json.dumps(summary, indent=1))
    log(f"saved the draft to {out} (final eval: {json.dumps(summary['final_eval'])})")
    return 0


def save_draft_vocab(args, student, target, examples, eval_examples, out: Path, cfg, log) -> dict | None:
    """Write ``out/draft_vocab.json`` (from the teacher data for --draft-vocab, else the --init draft's)."""
    import shutil

    from ..distill.shipped import SHIPPED_DIR
    from ..distill.train import evaluate
    from ..draft_vocab import (VOCAB_FILE, expected_counts, output_vocab_size, ranking_from_counts, read_vocab,
                               reduce_head, select, write_vocab)
    from ..models import eos_token_ids

    if args.draft_vocab is None:
        source = SHIPPED_DIR if args.init == "shipped" else Path(args.init) if args.init else None
        if source is not None and (source / VOCAB_FILE).exists():
            shutil.copyfile(source / VOCAB_FILE, out / VOCAB_FILE)
            return {"copied_from": str(source), "k": read_vocab(out)["k"]}
        return None
    vocab = output_vocab_size(student)
    counts = expected_counts(examples, vocab)
    ranking = ranking_from_counts(counts)
    chosen = select({"ranking": ranking, "k": args.draft_vocab}, min(args.draft_vocab, vocab), vocab,
                    eos_token_ids(target))
    coverage = float(counts[chosen].sum() / counts.sum()) if counts.sum() > 0 else 0.0
    positions = sum(len(e.top_ids) for e in examples)
    write_vocab(out, ranking, args.draft_vocab, vocab_size=vocab, positions=positions, coverage=coverage,
                source=f"expected counts under the target's top-{args.top_k} next-token distributions on "
                       f"{positions} positions of its teacher data ({', '.join(args.data or ['sharegpt:2000'])})")
    full = evaluate(student, eval_examples, cfg)
    reduced = evaluate(reduce_head(student, chosen), eval_examples, cfg)
    reduced["kl"] = None  # infinite wherever the target's top-k reaches outside the subset
    log(f"draft vocabulary: {len(chosen)} of {vocab} tokens ({len(ranking)} seen), {coverage:.2%} of the "
        f"expected mass; top-1 agreement on held-out data {full['top1']:.1%} full, {reduced['top1']:.1%} reduced")
    return {"k": args.draft_vocab, "tokens_seen": len(ranking), "expected_mass": round(coverage, 6),
            "eval_full_head": full, "eval_reduced_head": reduced}
