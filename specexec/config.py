"""Typed, validated configuration of one generation.

The CLI and the experiment runner map their flags one-to-one onto these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .errors import ConfigError

METHODS = ("specexec", "specinfer", "chain", "autoregressive")


@dataclass(frozen=True)
class SamplingConfig:
    """How a token is drawn from a distribution. ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides what one call of ``generate`` does.

    Tree parameters follow the SpecExec paper: ``max_budget`` draft tokens in the tree,
    ``max_beam_len`` draft passes (the depth cap), ``max_n_beams`` nodes expanded per draft
    pass, ``max_branch_width`` children considered per expanded node, ``min_log_prob`` the
    lowest cumulative draft log-probability a node may have, ``decay`` a per-level factor
    on the cumulative probability (1.0 = none). For SpecInfer ``max_n_beams`` chains of
    ``max_beam_len`` tokens are sampled; ``chain`` is one chain of ``max_beam_len`` tokens.
    """

    method: str = "specexec"
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_budget: int = 64
    max_beam_len: int = 16
    max_n_beams: int = 16
    max_branch_width: int = 16
    min_log_prob: float | None = None
    decay: float = 1.0
    draft_temperature: float | None = None  # SpecInfer/chain: draft sampling temperature (default: the run's)
    seed: int | None = 0
    stop_on_eos: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("max_new_tokens", "max_budget", "max_beam_len", "max_n_beams", "max_branch_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.min_log_prob is not None:
            if not isinstance(self.min_log_prob, (int, float)) or math.isnan(self.min_log_prob) or self.min_log_prob > 0:
                raise ConfigError(f"min_log_prob must be a log-probability <= 0, got {self.min_log_prob!r}")
        if not isinstance(self.decay, (int, float)) or not (0.0 < self.decay <= 1.0):
            raise ConfigError(f"decay must be in (0, 1], got {self.decay!r}")
        if self.draft_temperature is not None and (
            not isinstance(self.draft_temperature, (int, float)) or self.draft_temperature < 0
        ):
            raise ConfigError(f"draft_temperature must be >= 0, got {self.draft_temperature!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError("sampling must be a SamplingConfig")

    def with_(self, **changes) -> "GenerationConfig":
        """A copy with some fields changed; sampling fields may be given flat."""
        sampling_changes = {k: changes.pop(k) for k in ("temperature", "top_p", "top_k") if k in changes}
        sampling = replace(self.sampling, **sampling_changes) if sampling_changes else self.sampling
        return replace(self, sampling=sampling, **changes)
