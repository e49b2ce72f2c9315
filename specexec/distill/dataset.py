"""Building and reading the distillation data set: shards of teacher-scored examples on disk.

``OUT/data/shard-NNNNN.pt`` holds the :class:`~specexec.distill.teacher.Example`s of one
generation batch. A finished shard is never rewritten, so an interrupted build resumes where
it stopped; the set of prompts and their order depend only on the sources and the seed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from . import data as sources_mod
from .teacher import Example, generate_examples, score_text


def encode_prompt(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def plan(tokenizer, specs: list[str], *, seed: int, max_prompt_tokens: int, seq_len: int,
         held_out_search: list[Path]) -> tuple[list[list[int]], list[tuple[list[int], int]]]:
    """(prompts to answer, (text chunk, first scored position) pairs), token ids in a seeded order."""
    held = sources_mod.held_out_texts(held_out_search)
    prompts: list[list[int]] = []
    chunks: list[tuple[list[int], int]] = []
    for spec in specs:
        source = sources_mod.parse_source(spec)
        if source.self_distilled:
            texts = sources_mod.filter_held_out(sources_mod.load_prompts(source), held)
            for t in texts:
                ids = encode_prompt(tokenizer, t)
                if len(ids) <= max_prompt_tokens:
                    prompts.append(ids)
        elif source.prebuilt:
            continue
        elif source.kind == "sharegpt-chat":
            exchanges = sources_mod.sharegpt_exchanges(source.stop)[source.start:]
            for q, a in sources_mod.filter_held_out(exchanges, held):
                head = encode_prompt(tokenizer, q)
                if len(head) > min(max_prompt_tokens, seq_len - 16):
                    continue
                eos = tokenizer.eos_token_id
                body = list(tokenizer(a, add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])
                chunks.append(((head + body)[:seq_len], len(head)))
        else:
            for t in sources_mod.filter_held_out(sources_mod.load_texts(source), held):
                ids = list(tokenizer(t, add_special_tokens=True)["input_ids"])
                chunks.extend((ids[i:i + seq_len], 1) for i in range(0, len(ids) - 1, seq_len)
                              if len(ids[i:i + seq_len]) > 1)
    rng = random.Random(seed)
    rng.shuffle(prompts)
    rng.shuffle(chunks)
    return prompts, chunks


def build(model, tokenizer, specs: list[str], out_dir: Path, *, seed: int, k: int, batch_size: int,
          max_prompt_tokens: int, max_new_tokens: int, temperature: float, seq_len: int,
          held_out_search: list[Path], eos_ids: set[int], pad_id: int, max_shards: int | None = None,
          log=print, progress: bool = True, sample_tokens: int = 0) -> list[Path]:
    """Write (or finish writing) the shards; returns their paths."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    prompts, chunks = plan(tokenizer, specs, seed=seed, max_prompt_tokens=max_prompt_tokens, seq_len=seq_len,
                           held_out_search=held_out_search)
    # group prompts of similar length into a batch (less padding), keep the batches in seeded order
    batches = [sorted(prompts[i:i + batch_size * 8], key=len) for i in range(0, len(prompts), batch_size * 8)]
    batches = [group[j:j + batch_size] for group in batches for j in range(0, len(group), batch_size)]
    jobs = [("gen", b) for b in batches] + [("text", chunks[i:i + batch_size]) for i in range(0, len(chunks), batch_size)]
    jobs = jobs[:max_shards] if max_shards else jobs
    log(f"data: {len(prompts)} prompts to answer, {len(chunks)} text chunks, {len(jobs)} shards")
    paths = []
    bar = tqdm(total=len(jobs), desc="teacher data", unit="shard", disable=not progress)
    tokens, t0 = 0, time.perf_counter()
    for n, (kind, items) in enumerate(jobs):
        path = out_dir / f"shard-{n:05d}.pt"
        paths.append(path)
        if path.exists():
            bar.update(1)
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + n)
        if kind == "gen":
            examples = generate_examples(model, items, max_new_tokens=max_new_tokens, temperature=temperature, k=k,
                                         eos_ids=eos_ids, pad_id=pad_id, generator=generator,
                                         sample_tokens=sample_tokens)
        else:
            examples = score_text(model, items, k)
        tmp = path.with_suffix(".tmp")
        torch.save([e.to_dict() for e in examples], tmp)
        tmp.replace(path)
        tokens += sum(len(e.top_ids) for e in examples)
        bar.update(1)
        rate = tokens / (time.perf_counter() - t0)
        bar.set_postfix(tok_s=f"{rate:.0f}")
        if not progress and ((n + 1) % 10 == 0 or n + 1 == len(jobs)):
            log(f"data: shard {n + 1}/{len(jobs)}, {rate:.0f} tokens/s")
    bar.close()
    return paths


def load_examples(paths: list[Path]) -> list[Example]:
    out = []
    for p in paths:
        out.extend(Example.from_dict(d) for d in torch.load(p, weights_only=True))
    return out
