"""Typed, validated configuration of one generation.

The CLI and the experiment runner map their flags one-to-one onto these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .errors import ConfigError

METHODS = ("specexec", "specinfer", "chain", "autoregressive")
# A positive temperature below this is decoded greedily: logits / T would overflow to infinity
# (and at such a temperature sampling is greedy anyway, up to exact ties).
MIN_TEMPERATURE = 1e-30
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes
AUTO = "auto"  # max_budget chosen per pass for the hardware (specexec.budget)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingConfig:
    """How a token is drawn from a distribution. ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter

    def __post_init__(self):
        if not _number(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _number(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides what one call of ``generate`` does.

    Tree parameters follow the SpecExec paper: ``max_budget`` draft tokens in the tree,
    ``max_beam_len`` draft passes (the depth cap), ``max_n_beams`` nodes expanded per draft
    pass, ``max_branch_width`` children considered per expanded node, ``min_log_prob`` the
    lowest cumulative draft log-probability a node may have, ``decay`` a per-level factor
    on the cumulative probability (1.0 = none). ``max_budget="auto"`` chooses the budget and
    the depth cap (up to ``max_beam_len``) before every pass, from the measured cost of
    passes on this machine and the trees accepted so far (:mod:`specexec.budget`); it may
    choose no tree at all (an autoregressive step). For SpecInfer ``max_n_beams`` chains of
    ``max_beam_len`` tokens are sampled; ``chain`` is one chain of ``max_beam_len`` tokens.
    """

    method: str = "specexec"
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_budget: int | str = "auto"  # or a fixed number of draft tokens per tree
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
            if name == "max_budget" and value == AUTO:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                also = " or 'auto'" if name == "max_budget" else ""
                raise ConfigError(f"{name} must be a positive integer{also}, got {value!r}")
        if self.min_log_prob is not None:
            if (not isinstance(self.min_log_prob, (int, float)) or isinstance(self.min_log_prob, bool)
                    or math.isnan(self.min_log_prob) or self.min_log_prob > 0):
                raise ConfigError(f"min_log_prob must be a log-probability <= 0, got {self.min_log_prob!r}")
        if not _number(self.decay) or not (0.0 < self.decay <= 1.0):
            raise ConfigError(f"decay must be in (0, 1], got {self.decay!r}")
        if self.draft_temperature is not None and (not _number(self.draft_temperature) or self.draft_temperature < 0):
            raise ConfigError(f"draft_temperature must be a finite number >= 0, got {self.draft_temperature!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            raise ConfigError(f"seed must be an integer in [0, 2**64), or None for a random seed; got {self.seed!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError("sampling must be a SamplingConfig")

    @property
    def auto_budget(self) -> bool:
        return self.max_budget == AUTO

    def with_(self, **changes) -> "GenerationConfig":
        """A copy with some fields changed; sampling fields may be given flat."""
        sampling_changes = {k: changes.pop(k) for k in ("temperature", "top_p", "top_k") if k in changes}
        sampling = replace(self.sampling, **sampling_changes) if sampling_changes else self.sampling
        return replace(self, sampling=sampling, **changes)


def budget_value(text: str) -> int | str:
    """A command-line budget: a positive integer or 'auto'."""
    import argparse

    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a budget is a positive integer or 'auto', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a budget is a positive integer or 'auto', not {text!r}")
    return value
