"""Drafts that score part of the vocabulary: a cheaper head for the draft.

A draft's output head costs ``hidden x vocab`` multiply-adds per token: for a small draft of a
large-vocabulary target it is most of the draft's pass. A reduced head keeps the target's rows
for the K tokens the target uses most. :class:`SubsetHead` computes logits for those K tokens
and returns them at their full-vocabulary positions, ``-inf`` elsewhere, so tree growth,
sampling and verification see an ordinary draft whose distribution has no mass outside the
subset: proposals are full token ids, and exactness (which never depends on the draft) holds.

The choice of tokens is a ranking stored next to the draft (``draft_vocab.json``): token ids
in order of their expected count under the target's next-token distributions on its own
answers (the teacher data of ``specexec distill``), and the K the draft uses by default. Any
K can be taken from the same ranking when the draft is loaded; tokens the ranking never saw
follow in id order, and the target's EOS ids are always kept.

A ranking made from other text misses the tokens a prompt brings with it (names, code, words of
a less common language) and that the answer then repeats: on held-out oasst prompts four in
five of the target's tokens outside an 8192-token subset had already appeared in the prompt or
earlier in the answer (docs/draft.md). So a reduced head also scores the tokens of the sequence being decoded
(:meth:`SubsetHead.add_context`, fed by the draft's runner with every token it reads; cleared
for each new sequence): their rows come from the full head, which the head keeps a reference to,
not a copy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .errors import ConfigError, ModelLoadError

VOCAB_FILE = "draft_vocab.json"
FULL = "full"


class SubsetHead(torch.nn.Module):
    """An output head over ``token_ids`` only, returning full-vocabulary logits (``-inf`` elsewhere).

    ``source`` (and ``source_bias``): the full head's rows, kept by reference; with them the head
    also scores the tokens given to :meth:`add_context` (the sequence being decoded) until
    :meth:`reset_context`. ``follow_context = False`` turns that off.
    """

    follow_context = True

    def __init__(self, weight: torch.Tensor, token_ids: torch.Tensor, vocab_size: int,
                 bias: torch.Tensor | None = None, *, source: torch.Tensor | None = None,
                 source_bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("token_ids", token_ids.to(device=weight.device, dtype=torch.long))
        self.vocab_size = int(vocab_size)
        self._source = None if source is None else source.detach()
        self._source_bias = None if source_bias is None else source_bias.detach()
        # the rows of the sequence's tokens: buffers, so that .to() moves and converts them with the head
        for name in ("_extra_ids", "_extra_weight", "_extra_bias"):
            self.register_buffer(name, None, persistent=False)
        self.reset_context()

    def reset_context(self) -> None:
        """Score the subset only again (a new sequence starts)."""
        device = self.weight.device
        self._extra_ids = torch.empty(0, dtype=torch.long, device=device)
        self._extra_weight = self.weight.new_empty((0, self.weight.shape[1]))
        self._extra_bias = None if self.bias is None else self.bias.new_empty(0)
        self._member = torch.zeros(self.vocab_size, dtype=torch.bool)
        self._member[self.token_ids.cpu()] = True

    def add_context(self, token_ids) -> None:
        """Also score these tokens from now on (those not scored yet get their full-head rows)."""
        if not self.follow_context or self._source is None:
            return
        ids = torch.as_tensor(token_ids).reshape(-1).to("cpu", torch.long)
        ids = ids[(ids >= 0) & (ids < self.vocab_size)]
        new = ids[~self._member[ids]].unique()
        if new.numel() == 0:
            return
        self._member[new] = True
        device, dtype = self.weight.device, self.weight.dtype
        rows = self._source[new.to(self._source.device)].to(device=device, dtype=dtype)
        self._extra_weight = torch.cat([self._extra_weight, rows])
        self._extra_ids = torch.cat([self._extra_ids, new.to(device)])
        if self._extra_bias is not None:
            extra = self._source_bias[new.to(self._source_bias.device)].to(device=device, dtype=dtype)
            self._extra_bias = torch.cat([self._extra_bias, extra])

    @property
    def context_tokens(self) -> list[int]:
        """Tokens scored beyond the subset, in the order they came."""
        return self._extra_ids.tolist()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.linear(hidden, self.weight, self.bias)
        out = small.new_full((*small.shape[:-1], self.vocab_size), -math.inf)
        out.index_copy_(-1, self.token_ids, small)
        if self._extra_ids.numel():
            extra = torch.nn.functional.linear(hidden, self._extra_weight, self._extra_bias)
            out.index_copy_(-1, self._extra_ids, extra.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} of {self.vocab_size} tokens, hidden {self.weight.shape[1]}"


def output_vocab_size(model) -> int:
    """The number of token ids a model's logits cover (a reduced head still covers them all)."""
    head = model.get_output_embeddings()
    return int(getattr(head, "vocab_size", None) or head.weight.shape[0])


def head_tokens(model) -> int:
    """Rows of the model's output head: the tokens its draft passes score."""
    return int(model.get_output_embeddings().weight.shape[0])


def reduce_head(model, token_ids) -> torch.nn.Module:
    """Replace ``model``'s output head by the rows of ``token_ids`` (in place; returns the model)."""
    head = model.get_output_embeddings()
    if isinstance(head, SubsetHead):
        raise ConfigError("this draft's head is already reduced")
    vocab = head.weight.shape[0]
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab or ids.unique().numel() != ids.numel():
        raise ConfigError(f"a reduced draft vocabulary needs distinct token ids in [0, {vocab})")
    ids = ids.sort().values.to(head.weight.device)
    bias = getattr(head, "bias", None)
    model.set_output_embeddings(SubsetHead(head.weight[ids], ids, vocab, None if bias is None else bias[ids],
                                           source=head.weight, source_bias=bias))
    model.config.tie_word_embeddings = False  # the head is no longer the embedding matrix
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return model


# ---------------------------------------------------------------------------- the ranking
def expected_counts(examples, vocab_size: int) -> torch.Tensor:
    """Expected count of every token under the teacher's next-token distributions (its top-k log-probs)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for e in examples:
        ids = e.top_ids.reshape(-1).long()
        keep = ids < vocab_size
        counts.index_add_(0, ids[keep], e.top_logp.reshape(-1)[keep].double().exp())
    return counts


def ranking_from_counts(counts: torch.Tensor) -> list[int]:
    """Token ids seen (count > 0), most expected first; ties by id."""
    seen = torch.nonzero(counts > 0).flatten()  # ascending ids: a stable sort keeps ties in id order
    return seen[torch.sort(counts[seen], descending=True, stable=True).indices].tolist()


def write_vocab(folder: Path, ranking: list[int], k: int, *, vocab_size: int, source: str, positions: int,
                coverage: float) -> Path:
    """Write the ranking and default K into ``folder``."""
    if not 0 < k <= vocab_size:
        raise ConfigError(f"--draft-vocab must be between 1 and the vocabulary size {vocab_size}")
    path = Path(folder) / VOCAB_FILE
    data = {"k": int(k), "vocab_size": int(vocab_size), "source": source, "positions": int(positions),
            "expected_mass_in_top_k": round(float(coverage), 6), "ranking": [int(i) for i in ranking]}
    path.write_text(json.dumps(data))
    return path


def read_vocab(folder: Path) -> dict | None:
    path = Path(folder) / VOCAB_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("ranking"), list) or int(data["k"]) <= 0:
            raise ValueError("no ranking or no K")
        return data
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{path} is unreadable ({err}): delete it to use the full head") from err


def select(data: dict, k: int, vocab_size: int, always=()) -> list[int]:
    """The first ``k`` tokens of the ranking, then unseen ids in order; ``always`` added."""
    if int(data.get("vocab_size", vocab_size)) != vocab_size:
        raise ModelLoadError(f"the draft's vocabulary ranking is for {data['vocab_size']} tokens, the model has {vocab_size}")
    chosen: list[int] = []
    seen: set[int] = set()
    for i in (int(t) for t in data["ranking"]):
        if len(chosen) >= k:
            break
        if 0 <= i < vocab_size and i not in seen:
            chosen.append(i)
            seen.add(i)
    i = 0
    while len(chosen) < k and i < vocab_size:
        if i not in seen:
            chosen.append(i)
            seen.add(i)
        i += 1
    chosen += [int(t) for t in always if 0 <= int(t) < vocab_size and int(t) not in seen]
    return chosen


def parse_draft_vocab(value) -> int | str | None:
    """``None`` (the draft's own choice), ``"full"``, or a positive K; anything else is refused."""
    if value is None or value == FULL:
        return value
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"draft vocabulary must be 'full' or a positive number of tokens, not {value!r}") from None
    if k <= 0 or (isinstance(value, float) and value != k):
        raise ConfigError(f"draft vocabulary must be 'full' or a positive number of tokens, not {value!r}")
    return k


def draft_vocab_value(text: str) -> int | str:
    """A command-line draft vocabulary: 'full' or a positive K."""
    import argparse

    try:
        return parse_draft_vocab(text.strip().lower())
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def apply_draft_vocab(draft, folder: Path | None, choice=None, always=()) -> torch.nn.Module:
    """Reduce ``draft``'s head as its folder's ranking says (``choice``: None = its K, 'full', or a K)."""
    choice = parse_draft_vocab(choice)
    if choice == FULL:
        return draft
    data = read_vocab(folder) if folder is not None else None
    if data is None:
        if choice is not None:
            raise ConfigError(f"--draft-vocab {choice}: this draft has no token ranking ({VOCAB_FILE}); make one "
                              "with `specexec distill --init DRAFT --steps 0 --draft-vocab K`")
        return draft
    vocab = output_vocab_size(draft)
    k = int(data["k"]) if choice is None else choice
    if k >= vocab:
        return draft
    return reduce_head(draft, select(data, k, vocab, always))
