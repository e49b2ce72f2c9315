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
