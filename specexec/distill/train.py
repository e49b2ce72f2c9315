"""The distillation loop: match the target's next-token distributions, with checkpoints.

Loss at each scored position (p the target, q the draft):

    KL(p~ || q~) = sum_{i in top-k(p)} p_i log(p_i / q_i) + p_rest log(p_rest / q_rest)

where ``p_rest = 1 - sum_topk p_i`` and ``q_rest = 1 - sum_topk q_i``: the KL between the two
distributions with every token outside the target's top k merged into one bucket. It is a
lower bound of the full-vocabulary KL, equal to it when the target puts no mass outside its
top k, and it still pushes down the draft's mass outside them (through ``q_rest``). q is the
draft's softmax over the full vocabulary. Storing k (default 32) teacher values per token
instead of 49k lets the target score the data once, while it writes it.

The run is a function of the seed and the step: batch s is a fixed slice of seeded epoch
permutations and the learning rate depends on s alone, so resuming from a checkpoint (weights,
optimizer state, step) reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .student import trainable_state
from .teacher import Example


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    save_every: int = 50
    amp: str = "none"  # "bf16": autocast the draft's forward to bfloat16 (faster on CPUs with bf16)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def batch_indices(step: int, n: int, cfg: TrainConfig) -> list[int]:
    out = []
    start = step * cfg.batch_size
    for pos in range(start, start + cfg.batch_size):
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        out.append(int(perm[offset]))
    return out


def collate(examples: list[Example], seq_len: int):
    """Right-padded ids (B, T), and for each scored position: batch row, hidden index, top ids/log-probs."""
    width = max(min(len(e.ids), seq_len) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, tops, logps = [], [], [], []
    for b, e in enumerate(examples):
        n = min(len(e.ids), seq_len)
        ids[b, :n] = e.ids[:n].long()
        scored = max(0, n - e.first)  # predicted tokens e.first .. n-1, from hidden states first-1 .. n-2
        rows.append(torch.full((scored,), b, dtype=torch.long))
        cols.append(torch.arange(e.first - 1, e.first - 1 + scored))
        tops.append(e.top_ids[:scored].long())
        logps.append(e.top_logp[:scored].float())
    return ids, torch.cat(rows), torch.cat(cols), torch.cat(tops), torch.cat(logps)


def draft_logits(student, ids, rows, cols, amp: str):
    ctx = torch.autocast(ids.device.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()
    with ctx:
        hidden = student.base_model(input_ids=ids).last_hidden_state[rows, cols]
        logits = student.get_output_embeddings()(hidden)
    return logits.float()


def sparse_kl(logq_full: torch.Tensor, top: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL between the top-k-plus-rest coarsenings of p (given) and q (full log-softmax)."""
    logq = logq_full.gather(1, top)
    p = logp.exp()
    p_rest = (1 - p.sum(1)).clamp(min=1e-6)
    q_rest = (1 - logq.exp().sum(1)).clamp(min=1e-6)
    return (p * (logp - logq)).sum(1) + p_rest * (p_rest.log() - q_rest.log())


@torch.no_grad()
def evaluate(student, examples: list[Example], cfg: TrainConfig, batch_size: int = 8) -> dict:
    student.eval()
    hits = {1: 0, 4: 0, 16: 0}
    kl_sum, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, rows, cols, top, logp = collate(examples[i:i + batch_size], cfg.seq_len)
        logq = torch.log_softmax(draft_logits(student, ids.to(_dev(student)), rows, cols, cfg.amp), -1).cpu()
        kl_sum += float(sparse_kl(logq, top, logp).sum())
        target_best = logq.gather(1, top[:, :1])
        rank = (logq > target_best).sum(1)
        for k in hits:
            hits[k] += int((rank < k).sum())
        n += len(top)
    student.train()
    return {"kl": kl_sum / max(1, n), **{f"top{k}": hits[k] / max(1, n) for k in hits}, "tokens": n}


def _dev(model):
    return next(model.parameters()).device


def _save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(student, examples: list[Example], eval_examples: list[Example], out_dir: Path, cfg: TrainConfig, *,
          resume: bool = False, log=print, progress: bool = True, stop_after: int | None = None) -> list[dict]:
    """Train ``student`` in place for ``cfg.steps`` steps; returns the log records.

    ``stop_after``: leave after that step, with a checkpoint, as an interrupted run would.
    """
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    step, records = 0, []
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        student.load_state_dict(ckpt["trainable"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        step, records = ckpt["step"], ckpt["records"]
        log(f"resumed from step {step}")
    student.train()
    device = _dev(student)
    bar = tqdm(total=cfg.steps, initial=step, desc="distill", unit="step", disable=not progress)
    tokens, t0 = 0, time.perf_counter()
    while step < cfg.steps:
        batch = [examples[i] for i in batch_indices(step, len(examples), cfg)]
        ids, rows, cols, top, logp = collate(batch, cfg.seq_len)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        if len(top):
            logq = torch.log_softmax(draft_logits(student, ids.to(device), rows.to(device), cols.to(device), cfg.amp), -1)
            loss = sparse_kl(logq, top.to(device), logp.to(device)).mean()
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        else:  # nothing scored in this batch (every sequence cut before its response)
            loss = torch.zeros(())
        step += 1
        tokens += len(top)
        tok_s = tokens / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:.0f}")
        record = {"step": step, "loss": round(loss.item(), 5), "lr": lr_at(step - 1, cfg), "tok_s": round(tok_s, 1)}
        if eval_examples and (step % cfg.eval_every == 0 or step == cfg.steps):
            record["eval"] = evaluate(student, eval_examples, cfg)
            log(f"step {step}: eval {json.dumps(record['eval'])}")
        records.append(record)
        if step % cfg.save_every == 0 or step == cfg.steps or step == stop_after:
            _save(ckpt_path, {"step": step, "trainable": trainable_state(student), "optimizer": opt.state_dict(),
                              "records": records, "config": asdict(cfg)})
        if step == stop_after:
            break
    bar.close()
    student.eval()
    return records
