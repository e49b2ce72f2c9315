"""The decode loop: draft a tree, verify it in one target pass, keep the accepted path.

Invariants at the start of every iteration, with ``seq`` the prompt plus accepted tokens:
the target's cache holds ``seq[:-1]``; the draft's cache holds a prefix of ``seq``. The last
token of ``seq`` is the root of the next tree.
"""

from __future__ import annotations

import threading
import warnings
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from .budget import MAX_AUTO_BUDGET, BudgetChooser, CostProfile, FixedBudget, load_or_measure
from .config import GenerationConfig, SamplingConfig
from .detokenize import TextAssembler
from .errors import ConfigError, EngineBusyError, PromptError, UnsupportedModelError
from .growth import DraftExpander
from .methods import method_for
from .models import cache_dir, check_same_vocabulary, context_limit, eos_difference, eos_token_ids, load_model
from .processors import apply_on_tree, build_processors, ignored_settings
from .rope import length_switch
from .runner import ModelRunner
from .stats import GenerationStats
from .support import check_drivable
from .tree import TokenTree


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def _draft_sampling(cfg: GenerationConfig) -> SamplingConfig:
    """How SpecInfer and chain sample their draft tokens: the run's settings, at ``draft_temperature``."""
    s = cfg.sampling
    return SamplingConfig(temperature=s.temperature if cfg.draft_temperature is None else cfg.draft_temperature,
                          top_p=s.top_p, top_k=s.top_k)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    stats: GenerationStats

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "prompt_token_ids": self.prompt_token_ids,
                "stats": self.stats.to_dict()}


@dataclass
class StreamChunk:
    token_ids: list[int]  # tokens accepted in one target pass
    text: str  # the text they add (may be empty while a character is incomplete)


class GenerationStream:
    """Iterate for :class:`StreamChunk`s (one per target pass); ``result`` is set once the iteration ends.

    An open stream holds its engine: :meth:`close` it (or use it as a context manager) to
    stop early and free the engine for another call.
    """

    def __init__(self, chunks: Iterator[StreamChunk], outcome: dict, release):
        self._chunks = chunks
        self._outcome = outcome  # filled by the chunk generator; no reference back to this object
        self._release = release
        self._open = True

    @property
    def result(self) -> GenerationResult | None:
        return self._outcome.get("result")

    @property
    def stats(self) -> GenerationStats | None:
        """The generation's statistics so far (set at the first chunk; kept after an early close)."""
        return self._outcome.get("stats")

    def __iter__(self):
        return self

    def __next__(self) -> StreamChunk:
        try:
            return next(self._chunks)
        except BaseException:
            self._finish()
            raise

    def close(self) -> None:
        self._chunks.close()
        self._finish()

    def _finish(self) -> None:
        if self._open:
            self._open = False
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self._finish()


class SpecExecEngine:
    """Speculative decoding of one target model with one draft model.

    ``generate`` / ``stream`` take a prompt (text or token ids) and a
    :class:`~specexec.config.GenerationConfig` (or its fields as keyword arguments).
    """

    def __init__(self, target, tokenizer=None, draft=None, *, draft_tokenizer=None,
                 config: GenerationConfig | None = None):
        self.target = target.eval()
        self.tokenizer = tokenizer
        self.draft = draft.eval() if draft is not None else None
        check_drivable(self.target)
        if self.draft is not None:
            check_same_vocabulary(self.draft, self.target, draft_tokenizer, tokenizer)
            if self.draft is not self.target:
                try:
                    check_drivable(self.draft)
                except UnsupportedModelError as err:
                    raise UnsupportedModelError(f"draft: {err}") from None
        self.config = config or GenerationConfig()
        self.device = next(target.parameters()).device
        self.target_runner = ModelRunner(self.target)
        self.draft_runner = ModelRunner(self.draft) if self.draft is not None else None
        self.eos_ids = eos_token_ids(target, tokenizer)
        # what of the checkpoint's generation_config is not applied, and why (also warned once here)
        self.ignored_generation_settings = ignored_settings(getattr(target, "generation_config", None))
        notes = list(self.ignored_generation_settings.values()) + [eos_difference(target, tokenizer)]
        notes = [n for n in notes if n]
        if notes:
            warnings.warn("specexec: the target's generation_config differs from generate here: " + "; ".join(notes),
                          stacklevel=2)
        self.max_context = context_limit(target) or 1 << 30
        self.length_switch = length_switch(target)
        self._tree: TokenTree | None = None
        self._cache_scheme = None  # rotary frequencies the target's cache was written with (length switches)
        self._cost: CostProfile | None = None  # measured or read from the cache at the first "auto" budget
        self._choosers: dict = {}  # "auto" choosers by tree and sampling settings, kept across generations
        # callables(pass index, tree, accepted node indices, the target's own token) after each verification
        self.tree_watchers: list = []
        self._busy = threading.Lock()  # one generation at a time: the caches hold one sequence

    @classmethod
    def from_pretrained(cls, target: str | None = "embedded", draft: str | None = None, *,
                        dtype: str = "auto", device: str = "cpu", draft_layers: int | None = None,
                        config: GenerationConfig | None = None, offload: str | None = None,
                        device_size: int | None = None, keep_layers: int = 0,
                        draft_vocab: int | str | None = None, quantize: str | None = None,
                        draft_quantize: str | None = None, draft_dtype: str | None = "auto") -> "SpecExecEngine":
        """Load target and draft by name (hub id, folder, .gguf, or 'embedded').

        With no draft named, the draft is the default one for the embedded target, or a
        copy of the target's first ``draft_layers`` layers. ``offload`` ('disk' or 'cpu'),
        ``device_size`` and ``keep_layers`` stream the target's decoder layers
        (:mod:`specexec.offload`); the draft stays resident on the target's compute device.
        ``draft_vocab`` ('full' or a number K) overrides the size of a distilled draft's reduced
        output head (:mod:`specexec.draft_vocab`). ``quantize`` / ``draft_quantize`` ('int8' or
        'int4') quantize the target's / the draft's weights as they load (:mod:`specexec.quantize`).
        ``draft_dtype``: the dtype the draft computes in ('auto': bfloat16 for a float32 target on a CPU
        with native bfloat16, else the target's; :func:`specexec.drafts.resolve_draft_dtype`).
        """
        from .drafts import check_draft_dtype, check_draft_quantize, default_draft
        from .models import parse_dtype
        from .quantize import parse_quantize

        draft_quantize = parse_quantize(draft_quantize)
        check_draft_quantize(draft, draft_quantize)  # before anything loads
        check_draft_dtype(draft, draft_dtype, draft_quantize, parse_dtype(dtype))
        loaded = load_model(target, dtype=dtype, device=device, offload=offload, device_size=device_size,
                            keep_layers=keep_layers, quantize=quantize)
        device = str(next(loaded.model.parameters()).device)
        dtype = loaded.model.get_input_embeddings().weight.dtype  # what "auto" became: a named draft's too
        draft_model, draft_tok = default_draft(draft, loaded, dtype=dtype, device=device, draft_layers=draft_layers,
                                               draft_vocab=draft_vocab, quantize=draft_quantize,
                                               draft_dtype=draft_dtype)
        return cls(loaded.model, loaded.tokenizer, draft_model, draft_tokenizer=draft_tok, config=config)

    # ------------------------------------------------------------------ inputs
    def encode(self, prompt: str | list[int], chat: bool = False) -> list[int]:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty")
            if self.tokenizer is None:
                raise PromptError("this engine has no tokenizer: pass token ids")
            if chat:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise PromptError("the target's tokenizer has no chat template; run without chat")
                ids = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                    return_dict=False,
                )
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
            else:
                ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            ids = [int(t) for t in prompt]
        if len(ids) == 0:
            raise PromptError("the prompt is empty")
        vocab = self.target_runner.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise PromptError(f"prompt token ids must be in [0, {vocab})")
        if len(ids) >= self.max_context:
            raise PromptError(
                f"the prompt has {len(ids)} tokens but the target's context holds {self.max_context}; "
                "shorten the prompt"
            )
        return list(ids)

    def _config(self, config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
        cfg = config or self.config
        if overrides:
            try:
                cfg = cfg.with_(**overrides)
            except TypeError as err:
                raise ConfigError(str(err)) from err
        if method_for(cfg.method).uses_draft and self.draft is None:
            raise ConfigError(f"method {cfg.method!r} needs a draft model")
        self._tree_capacity(cfg)  # refuse settings whose tree cannot be allocated, before anything runs
        return cfg

    def decode_text(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ API
    def generate(self, prompt: str | list[int], *, chat: bool = False, config: GenerationConfig | None = None,
                 **overrides) -> GenerationResult:
        stream = self.stream(prompt, chat=chat, config=config, **overrides)
        for _ in stream:
            pass
        return stream.result

    def stream(self, prompt: str | list[int], *, chat: bool = False, config: GenerationConfig | None = None,
               **overrides) -> GenerationStream:
        cfg = self._config(config, overrides)
        ids = self.encode(prompt, chat=chat)
        if not self._busy.acquire(blocking=False):
            raise EngineBusyError(
                "this engine is already generating (a stream is open): finish or close() it first; "
                "one engine decodes one sequence at a time")

        outcome: dict = {}

        def chunks():
            stats = GenerationStats(method=cfg.method)
            outcome["stats"] = stats
            text = TextAssembler(self.decode_text)
            for new in self._decode(ids, cfg, stats):
                last = bool(stats.stop_reason)
                yield StreamChunk(new, text.finish(new) if last else text.add(new))
            if stats.new_tokens == 0 or text.shown != self.decode_text(text.token_ids):
                piece = text.finish()
                if piece:
                    yield StreamChunk([], piece)
            outcome["result"] = GenerationResult(self.decode_text(text.token_ids), text.token_ids, ids, stats)

        return GenerationStream(chunks(), outcome, self._busy.release)

    # ------------------------------------------------------------------ budgets
    def cost_profile(self, refresh: bool = False) -> CostProfile:
        """Seconds per target and draft pass against tokens per pass, here (cached in the user cache)."""
        if self._cost is None or refresh:
            self._cost, _, _ = load_or_measure(self.target_runner, self.draft_runner, cache_root=cache_dir(),
                                               context_limit=self.max_context, refresh=refresh)
        return self._cost

    def use_cost_profile(self, profile: CostProfile) -> None:
        """Decide ``auto`` budgets with this profile instead of measuring one (e.g. one made elsewhere)."""
        self._cost = profile

    MAX_CHOOSERS = 16

    def _planner(self, cfg: GenerationConfig):
        """The tree chooser of a generation. ``auto``'s chooser, with the acceptance it has learnt, carries
        over to the next generation with the same tree and sampling settings (a new one would pay
        again for the trees it tries before it knows them), except for seeded sampling: the
        random draws follow the trees, so such a call starts afresh, prices trees by the cost
        profile alone (not by this run's timings) and repeats exactly."""
        if not (method_for(cfg.method).chooses_budgets and cfg.auto_budget and self.draft is not None):
            return FixedBudget(MAX_AUTO_BUDGET if cfg.auto_budget else cfg.max_budget, cfg.max_beam_len)
        cost = self.cost_profile()
        if not cfg.sampling.greedy and cfg.seed is not None:
            key, chooser = None, None
        else:
            key = (cfg.max_beam_len, cfg.max_n_beams, cfg.max_branch_width, cfg.min_log_prob, cfg.decay, cfg.sampling)
            chooser = self._choosers.pop(key, None)
        if chooser is None or chooser.cost is not cost:
            chooser = BudgetChooser(cost, max_depth=cfg.max_beam_len, max_n_beams=cfg.max_n_beams,
                                    timed=key is not None)  # seeded sampling: the same trees each run
        if key is None:
            return chooser
        self._choosers[key] = chooser  # most recently used last
        while len(self._choosers) > self.MAX_CHOOSERS:
            self._choosers.pop(next(iter(self._choosers)))
        return chooser

    # ------------------------------------------------------------------ loop
    MAX_TREE_MASK_BYTES = 1 << 32  # the ancestor mask is capacity^2 booleans

    def _tree_capacity(self, cfg: GenerationConfig) -> int:
        """Nodes to preallocate: what the tree can reach under these settings, not what was asked."""
        capacity = method_for(cfg.method).capacity(cfg, self.target_runner.vocab_size)
        if capacity * capacity > self.MAX_TREE_MASK_BYTES:
            raise ConfigError(
                f"these tree settings reach {capacity} nodes, whose ancestor mask would take "
                f"{capacity * capacity / 2**30:.0f} GiB; lower max_budget, max_n_beams or max_beam_len")
        return capacity

    def _score_tree(self, tree: TokenTree, seq: list[int]) -> tuple[torch.Tensor, int]:
        """One target pass over the tree (and any accepted tokens its cache lacks).

        Returns the logits at the tree's nodes and the number of accepted tokens ("tail")
        that went in before them; both are appended to the target's cache.
        """
        target, device = self.target_runner, self.device
        n, length, c = tree.size, len(seq), self.target_runner.committed
        tail = seq[c : length - 1]
        t = len(tail)
        positions = (length - 1) + tree.depth[:n]
        if t == 0:
            visible = torch.cat([torch.ones(n, c, dtype=torch.bool, device=device), tree.ancestors[:n, :n]], dim=1)
            return target.forward(tree.tokens[:n], positions, visible), 0
        visible = torch.zeros(t + n, c + t + n, dtype=torch.bool, device=device)
        visible[:, :c] = True
        visible[:t, c : c + t] = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        visible[t:, c : c + t] = True
        visible[t:, c + t :] = tree.ancestors[:n, :n]
        tokens = torch.cat([torch.tensor(tail, device=device), tree.tokens[:n]])
        positions = torch.cat([torch.arange(c, length - 1, device=device), positions])
        return target.forward(tokens, positions, visible)[t:], t

    def _decode(self, prompt_ids: list[int], cfg: GenerationConfig, stats: GenerationStats) -> Iterator[list[int]]:
        method = method_for(cfg.method)
        generator = _generator(self.device, cfg.seed)
        draft = self.draft_runner if method.uses_draft else None
        seq = list(prompt_ids)
        tree = self._fresh_tree(seq[-1], self._tree_capacity(cfg))
        planner = self._planner(cfg)
        processors = build_processors(self.target, len(prompt_ids), cfg.max_new_tokens, self.eos_ids)
        eos = self.eos_ids if cfg.stop_on_eos else ()
        forward0 = self._prefill(seq, draft, stats)
        remaining = cfg.max_new_tokens
        while remaining > 0 and len(seq) < self.max_context:
            start = time.perf_counter()
            plan = planner.choose()
            depth = self._depth(plan, remaining, len(seq))
            q_at = self._grow(method, tree, draft, seq, cfg, plan.budget, depth, generator, stats)
            grown, n = time.perf_counter(), tree.size
            path, extra, base, tail = self._verify(method, tree, seq, processors, q_at, cfg.sampling, generator)
            planner.observe(tree, path, depth)
            for watch in self.tree_watchers:  # e.g. specexec.viz.TreeSnapshot
                watch(stats.target_passes, tree, path, extra)
            new = self._commit(tree, path, extra, base, tail, draft, depth)
            end = time.perf_counter()
            planner.observe_seconds(end - start)
            stats.record_pass(tree, n, (plan.budget if depth else 0) if method.chooses_budgets else None,
                              start, grown, end)
            new = stats.keep(new, remaining, eos, len(seq), self.max_context)
            seq.extend(new)
            remaining -= len(new)
            if stats.stop_reason:  # set before the last yield: the stream flushes its text there
                self._finish_stats(stats, draft, forward0)
            yield new
            if stats.stop_reason:
                return
        stats.stop_reason = "length" if remaining <= 0 else "context"
        self._finish_stats(stats, draft, forward0)

    # one iteration's steps: grow, verify, commit
    def _fresh_tree(self, root: int, capacity: int) -> TokenTree:
        if self._tree is None or self._tree.capacity < capacity or self._tree.device != self.device:
            self._tree = TokenTree(root, capacity, self.device)
        return self._tree

    def _prefill(self, seq: list[int], draft: ModelRunner | None, stats: GenerationStats) -> tuple[float, float]:
        """Empty both caches and fill them with the prompt but its last token (the first tree's root);
        returns the runners' forward-time counters before the decoding."""
        target, device = self.target_runner, self.device
        start = time.perf_counter()
        self._cache_scheme = None  # rotary frequencies the target's cache was written with (length switches)
        for runner in (target, draft) if draft is not None else (target,):
            runner.reset()
            if len(seq) > 1:
                runner.forward_chain(torch.tensor(seq[:-1], device=device), 0)
                runner.commit(torch.arange(0, len(seq) - 1, device=device))
        if len(seq) > 1 and self.length_switch:
            self._cache_scheme = self.length_switch.scheme(len(seq) - 1)
        stats.prefill_seconds = time.perf_counter() - start
        return target.forward_seconds, draft.forward_seconds if draft is not None else 0.0

    def _depth(self, plan, remaining: int, length: int) -> int:
        """How deep this pass's tree may go: the plan's depth within the tokens and context left."""
        room = self.max_context - length
        depth = max(0, min(plan.depth, remaining - 1, room - 1)) if plan.budget else 0
        cap = self.length_switch.depth_cap(length) if self.length_switch else None
        return depth if cap is None else min(depth, cap)

    def _grow(self, method, tree: TokenTree, draft, seq: list[int], cfg: GenerationConfig, budget: int, depth: int,
              generator: torch.Generator, stats: GenerationStats):
        """The draft catches up with ``seq`` and grows the method's tree from its last token."""
        tree.reset(seq[-1])
        q_at = None
        if draft is not None and depth > 0:
            device, root = self.device, len(seq) - 1
            tail = seq[draft.committed:]
            logits = draft.forward_chain(torch.tensor(tail, device=device), draft.committed)
            draft.commit(torch.arange(draft.committed, draft.committed + len(tail), device=device))
            tree.slot[0] = root
            tree.expanded[0] = True
            expander = DraftExpander(draft, tree, root_pos=root)
            q_at = method.grow(expander, logits[-1], cfg, depth, budget, _draft_sampling(cfg), generator)
            stats.draft_passes += 1 + expander.passes
        if draft is not None:
            draft.synchronize()
        return q_at

    def _verify(self, method, tree: TokenTree, seq: list[int], processors, q_at, sampling: SamplingConfig,
                generator: torch.Generator):
        """One target pass over the tree; the accepted path, the target's own next token, and where the pass
        went in the target's cache (its first slot and the accepted tokens it carried before the tree)."""
        switch = self.length_switch
        if switch:
            if switch.reencode and self._cache_scheme not in (None, switch.scheme(len(seq))):
                self.target_runner.reset()  # generate re-encodes the prefix at the switch: this pass does too
            self._cache_scheme = switch.scheme(len(seq))
        base = self.target_runner.committed
        logits, tail = self._score_tree(tree, seq)
        if processors is not None:
            logits = apply_on_tree(processors, logits, tree, seq)
        path, extra = method.accept(tree, logits, q_at, sampling, generator)
        return path, extra, base, tail

    def _commit(self, tree: TokenTree, path: torch.Tensor, extra: int, base: int, tail: int, draft,
                depth: int) -> list[int]:
        """Keep the accepted path in both caches; the tokens it adds."""
        target, device = self.target_runner, self.device
        target.commit(torch.cat([torch.arange(base, base + tail, device=device), base + tail + path]))
        new = tree.tokens[path[1:]].tolist() + [extra]
        if draft is not None and depth > 0:
            slots = tree.slot[path[1:]]
            in_cache = (slots >= draft.committed).long().cumprod(0).bool()  # the draft's cached prefix of it
            draft.commit(slots[in_cache])
        target.synchronize()
        return new

    def _finish_stats(self, stats, draft, fwd0) -> None:
        stats.seconds = sum(stats.iteration_seconds)
        stats.target_forward_seconds = self.target_runner.forward_seconds - fwd0[0]
        stats.draft_forward_seconds = (draft.forward_seconds - fwd0[1]) if draft else 0.0
