"""The teacher side of distillation: the target writes responses and scores them.

Every training example is a :class:`Example`: a token sequence and, for each position from
``first`` on, the target's top-k next-token log-probabilities (normalised over the full
vocabulary) for predicting that token. They are recorded while the target generates (one
forward pass per token, which generation needs anyway), or by one target pass over given text.
Training then needs no target forward pass at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Example:
    ids: torch.Tensor  # (L,) int32: prompt + response (or a text chunk)
    first: int  # first position whose token the teacher predicted
    top_ids: torch.Tensor  # (L - first, k) int32: the teacher's k most likely tokens at each predicted position
    top_logp: torch.Tensor  # (L - first, k) float16: their log-probabilities

    def to_dict(self) -> dict:
        return {"ids": self.ids, "first": self.first, "top_ids": self.top_ids, "top_logp": self.top_logp}

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(d["ids"], int(d["first"]), d["top_ids"], d["top_logp"])


def _topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logp, k, dim=-1)
    return ids.to(torch.int32), values.to(torch.float16)


@torch.no_grad()
def generate_examples(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, k: int,
                      eos_ids: set[int], pad_id: int, generator: torch.Generator,
                      sample_tokens: int = 0) -> list[Example]:
    """Batched generation with left padding; returns one :class:`Example` per prompt.

    Greedy for ``temperature == 0``, else sampling from softmax(logits / temperature). With
    ``sample_tokens > 0`` only the first ``sample_tokens`` tokens of each response are sampled
    and the rest is greedy: text in the style of the target's greedy answers, from varied
    starts, so one prompt yields many greedy-like answers. The recorded distributions are the
    target's own (temperature 1), whatever the sampling.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    done = torch.zeros(b, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids) or [-1], device=device)
    tokens, top_ids, top_logp = [], [], []
    step_ids, step_pos = ids, position
    for step in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, cache=cache,
                       use_cache=True).logits[:, -1]
        ti, tl = _topk(logits, k)
        top_ids.append(ti.cpu())
        top_logp.append(tl.cpu())
        if temperature == 0 or 0 < sample_tokens <= step:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt.cpu())
        done = done | torch.isin(nxt, eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
        step_pos = step_pos[:, -1:] + 1
        step_ids = nxt.unsqueeze(1)
    tokens = torch.stack(tokens, 1)  # (b, steps)
    top_ids = torch.stack(top_ids, 1)  # (b, steps, k)
    top_logp = torch.stack(top_logp, 1)
    out = []
    for i, p in enumerate(prompts):
        resp = tokens[i].tolist()
        n = len(resp)
        for j, t in enumerate(resp):
            if t in eos_ids:
                n = j + 1
                break
        seq = torch.tensor(list(p) + resp[:n], dtype=torch.int32)
        out.append(Example(seq, len(p), top_ids[i, :n].clone(), top_logp[i, :n].clone()))
    return out


@torch.no_grad()
def score_text(model, chunks: list[tuple[list[int], int]], k: int) -> list[Example]:
    """Teacher distributions over given sequences, from position ``first`` of each (one pass each)."""
    device = next(model.parameters()).device
    out = []
    for chunk, first in chunks:
        ids = torch.tensor([chunk], device=device)
        hidden = model.base_model(input_ids=ids).last_hidden_state[0, first - 1:-1]
        ti, tl = _topk(model.get_output_embeddings()(hidden), k)
        out.append(Example(torch.tensor(chunk, dtype=torch.int32), first, ti.cpu(), tl.cpu()))
    return out
