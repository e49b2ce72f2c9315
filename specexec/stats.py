"""What one generation did: passes, accepted tokens, tree shapes, where the time went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    method: str = "specexec"
    new_tokens: int = 0
    target_passes: int = 0  # target forward passes after the prefill
    draft_passes: int = 0
    prefill_seconds: float = 0.0
    seconds: float = 0.0  # decoding time, prefill excluded
    draft_seconds: float = 0.0  # growing trees (draft passes + tree bookkeeping)
    target_seconds: float = 0.0  # verifying (target pass + acceptance + cache commit)
    draft_forward_seconds: float = 0.0  # inside the draft model's forward alone
    target_forward_seconds: float = 0.0  # inside the target model's forward alone
    first_token_seconds: float = 0.0  # prefill + first iteration
    accepted_per_pass: list[int] = field(default_factory=list)
    tree_sizes: list[int] = field(default_factory=list)  # draft tokens per tree (root excluded)
    tree_depths: list[int] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)  # budget of each pass's tree (0: no tree was drafted)
    min_log_probs: list[float] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    stop_reason: str = ""

    def record_pass(self, tree, n: int, budget: int | None, start: float, grown: float, end: float) -> None:
        """One iteration: its tree of ``n`` nodes (root included), the budget it was grown under (None where
        the method has no budgets), and its times (start, tree grown, target pass and commit done)."""
        self.target_passes += 1
        self.draft_seconds += grown - start
        self.target_seconds += end - grown
        self.iteration_seconds.append(end - start)
        self.tree_sizes.append(n - 1)
        if budget is not None:
            self.budgets.append(budget)
        self.tree_depths.append(int(tree.depth[:n].max()))
        self.min_log_probs.append(float(tree.logp[1:n].min()) if n > 1 else 0.0)
        if self.target_passes == 1:
            self.first_token_seconds = self.prefill_seconds + (end - start)

    def keep(self, new: list[int], remaining: int, eos_ids, length: int, max_context: int) -> list[int]:
        """The tokens of a pass the generation keeps, cut after an EOS (``eos_ids`` empty: none stops it) and
        at the ``remaining`` token limit, with ``length`` tokens before them; sets the stop reason."""
        for i, tok in enumerate(new):
            if tok in eos_ids:
                new = new[: i + 1]
                self.stop_reason = "eos"
                break
        new = new[:remaining]
        self.accepted_per_pass.append(len(new))
        self.new_tokens += len(new)
        if not self.stop_reason and remaining == len(new):
            self.stop_reason = "length"
        elif not self.stop_reason and length + len(new) >= max_context:
            self.stop_reason = "context"
        return new

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def overhead_share(self) -> float:
        """Share of decoding time spent outside the two models' forward passes."""
        if self.seconds <= 0:
            return 0.0
        return max(0.0, 1.0 - (self.draft_forward_seconds + self.target_forward_seconds) / self.seconds)

    def mean(self, name: str) -> float:
        values = getattr(self, name)
        return sum(values) / len(values) if values else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_pass"] = self.tokens_per_pass
        d["tokens_per_second"] = self.tokens_per_second
        d["overhead_share"] = self.overhead_share
        return d
