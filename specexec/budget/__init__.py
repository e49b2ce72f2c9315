"""Budgets chosen for the hardware: ``max_budget="auto"``.

* :mod:`.cost`: seconds per forward pass against tokens per pass (the cost profile), measured.
* :mod:`.cache`: profiles cached per (models, dtype, device, offload mode, machine).
* :mod:`.acceptance`: expected tokens per pass for each (budget, depth cap), from verified trees.
* :mod:`.chooser`: the tree of most expected tokens per second, autoregressive included.
"""

from __future__ import annotations

from pathlib import Path

from . import cache
from .chooser import AUTOREGRESSIVE, MAX_AUTO_BUDGET, BudgetChooser, FixedBudget, TreePlan
from .cost import CostProfile, measure

STOP_RATIO = 33.0  # a pass costing more than 33 one-token passes loses even with 32 accepted tokens
MAX_DRAFT_TOKENS = 64


def load_or_measure(target_runner, draft_runner, *, cache_root: Path, context_limit: int | None = None,
                    refresh: bool = False, seconds: float = 8.0) -> tuple[CostProfile, Path, bool]:
    """The cost profile of this pair here: (profile, its cache file, whether it was measured now)."""
    draft_model = draft_runner.model if draft_runner is not None else None
    key = cache.profile_key(target_runner.model, draft_model)
    path = cache.profile_path(cache_root, key)
    profile = None if refresh else cache.load(path, key)
    if profile is not None:
        return profile, path, False
    profile = measure(target_runner, draft_runner, max_tokens=MAX_AUTO_BUDGET, max_draft_tokens=MAX_DRAFT_TOKENS,
                      stop_ratio=STOP_RATIO, seconds=seconds, context_limit=context_limit)
    cache.save(path, key, profile)
    return profile, path, True


__all__ = ["AUTOREGRESSIVE", "MAX_AUTO_BUDGET", "BudgetChooser", "CostProfile", "FixedBudget", "TreePlan",
           "load_or_measure"]
