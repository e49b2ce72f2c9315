"""Choosing the tree for the next pass: the (budget, depth cap) of most expected tokens per second.

Expected seconds of one iteration come from the cost profile: the draft's catch-up pass,
``depth - 1`` growth passes over ``min(max_n_beams, budget)`` nodes, and one target pass
over the tree. Expected tokens come from the acceptance profile; a candidate no recent tree
covered is valued optimistically (halfway from the best covered candidate below it to the
most it could give, depth + 1), so it is tried once when even that might pay and left alone
when it could not; an estimate no tree has renewed lately is dropped and the candidate
valued so again (ever more rarely for one that keeps losing), so the choice follows a text
whose predictability changes. Such probes take at most 5% of the (expected) time after the
first, and each emits at least one token, so where no tree pays, trying them again costs at most
5% of the speed of the best candidate known. Autoregressive decoding
(budget 0) is always a candidate: one token for one one-token target pass.

The profile is timed on a short prefix with passes back to back; decoding has longer prefixes,
drafting between passes and, streamed, reads that compete with both. So the chooser also keeps,
per budget, a running mean of measured over predicted iteration seconds (in logarithms, about
the last ten iterations of that budget), and prices each candidate at its profile time times
that ratio, or, for a budget not run yet, times the ratio of the nearest budget run (the
largest below it, else the smallest above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .acceptance import AcceptanceProfile
from .cost import CostProfile

AUTOREGRESSIVE = 0
DEPTH_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
MAX_AUTO_BUDGET = 1024
MIN_GAIN = 0.05  # tokens per pass an untried budget doubling or depth level is credited at least
TIME_MEMORY = 0.9  # decay of the weights in the mean of log(measured / predicted seconds): about ten iterations
PROBE_SHARE = 0.05  # of the time, at most, spent on candidates without a current estimate (after the first)
MAX_TIME_RATIO = 8.0  # one iteration's ratio counts as at most 8 or at least 1/8 (a stall is not a cost)


@dataclass(frozen=True)
class TreePlan:
    """The tree of one iteration: ``budget`` draft tokens (0: no tree) and at most ``depth`` draft passes."""

    budget: int
    depth: int


def budget_ladder(largest: int) -> list[int]:
    ladder, b = [], 1
    while b <= largest:
        ladder.append(b)
        b *= 2
    return ladder


class BudgetChooser:
    def __init__(self, cost: CostProfile, *, max_depth: int, max_n_beams: int, max_budget: int = MAX_AUTO_BUDGET,
                 optimism: float = 0.5, memory: float = 0.9, timed: bool = True):
        # budgets whose target pass was measured (a larger one could not pay: see cost.measure)
        largest = min(max_budget, cost.largest_target_pass)
        self.cost = cost
        self.budgets = budget_ladder(largest)
        self.depths = [d for d in DEPTH_LADDER if d <= max_depth] or [max_depth]
        self.max_n_beams = max_n_beams
        self.optimism = optimism
        self.acceptance = AcceptanceProfile(self.budgets, self.depths, memory=memory)
        self.last: TreePlan | None = None
        self._fixed_seconds = [[self._after_catch_up(TreePlan(b, d)) for d in self.depths] for b in self.budgets]
        self.catch_up = 2  # tokens the draft's first pass of an iteration takes in (accepted last time + 1)
        # measured iteration times correct the profile's, per budget (0: autoregressive); ``timed=False``
        # keeps to the profile alone, so that the same inputs choose the same trees (seeded sampling)
        self.timed = timed
        self.log_ratio: dict[int, float] = {}  # weighted mean of log(measured / predicted seconds)
        self._ratio_weight: dict[int, float] = {}
        self._predicted: tuple[int, float] | None = None  # (budget, profile seconds) of the last iteration
        self.spent_seconds = 0.0  # expected seconds of every choice so far, and of the probes among them
        self.probe_seconds = 0.0

    # ------------------------------------------------------------------ model
    def seconds(self, plan: TreePlan) -> float:
        """Expected seconds of one iteration with ``plan``: the profile's, corrected by measured times."""
        return self.profile_seconds(plan) * self.time_ratio(plan.budget)

    def profile_seconds(self, plan: TreePlan) -> float:
        if plan.budget == AUTOREGRESSIVE:
            return self.cost.target_seconds(1)
        return self.cost.draft_seconds(self.catch_up) + self._after_catch_up(plan)

    def time_ratio(self, budget: int) -> float:
        """Measured over predicted iteration seconds for ``budget`` (borrowed from the nearest budget run)."""
        if not self.log_ratio:
            return 1.0
        if budget not in self.log_ratio:
            below = [b for b in self.log_ratio if b < budget]
            budget = max(below) if below else min(self.log_ratio)
        return math.exp(self.log_ratio[budget])

    def _after_catch_up(self, plan: TreePlan) -> float:
        growth = (plan.depth - 1) * self.cost.draft_seconds(min(self.max_n_beams, plan.budget))
        return growth + self.cost.target_seconds(plan.budget + 1)

    def expected_tokens(self) -> list[list[tuple[float, bool]]]:
        """(tokens per pass to credit, whether it is an estimate rather than a hope), budgets by depths.

        A candidate no tree covered lately is extrapolated from the best covered one below
        it, at the gains its last budget doubling and its last depth step gave there (at
        least ``MIN_GAIN`` a step: deeper levels are reached no more often than shallower
        ones, and budgets pay less with every doubling). With no such gain measured, it is
        credited halfway (``optimism``) to the most it could give, depth + 1.
        """
        est = self.acceptance.estimates()
        depths = self.depths
        # best[i][j]: (estimate, a, b) of the best covered candidate (a, b) <= (i, j), or None
        best: list[list[tuple | None]] = []
        out = []
        for i, row in enumerate(est):
            best.append([])
            out.append([])
            for j, known in enumerate(row):
                options = [x for x in ((known, i, j) if known is not None else None,
                                       best[i - 1][j] if i else None, best[i][j - 1] if j else None) if x]
                best[i].append(max(options) if options else None)
                if known is not None:
                    out[i].append((known, True))
                    continue
                ceiling = depths[j] + 1
                if best[i][j] is None:
                    out[i].append((1.0 + self.optimism * (ceiling - 1.0), False))
                    continue
                base, a, b = best[i][j]
                value, hope = base, False
                if a < i:
                    prev = est[a - 1][b] if a else None
                    hope |= prev is None
                    value += (i - a) * max(base - (prev or 0.0), MIN_GAIN)
                if b < j:
                    prev = est[a][b - 1] if b else None
                    hope |= prev is None
                    value += (depths[j] - depths[b]) * max((base - (prev or 0.0)) / (depths[b] - depths[b - 1] if b else 1),
                                                           MIN_GAIN)
                if hope:  # no gain measured to extrapolate from
                    value = base + self.optimism * max(0.0, ceiling - base)
                out[i].append((min(value, ceiling), False))
        return out

    def table(self) -> list[tuple[TreePlan, float, float, bool]]:
        """Every candidate with (expected tokens, expected seconds, measured?), autoregressive first."""
        rows = [(TreePlan(AUTOREGRESSIVE, 0), 1.0, self.seconds(TreePlan(AUTOREGRESSIVE, 0)), True)]
        tokens = self.expected_tokens()
        catch_up = self.cost.draft_seconds(self.catch_up)
        for i, b in enumerate(self.budgets):
            ratio = self.time_ratio(b)
            for j, d in enumerate(self.depths):
                if d > b:
                    continue
                plan = TreePlan(b, d)
                expected, measured = tokens[i][j]
                rows.append((plan, expected, (catch_up + self._fixed_seconds[i][j]) * ratio, measured))
        return rows

    # ------------------------------------------------------------------ choice
    def choose(self) -> TreePlan:
        """The candidate of most expected tokens per second; one without a current estimate (a probe)
        only while probes have taken at most ``PROBE_SHARE`` of the expected seconds so far."""
        may_probe = self.probe_seconds <= PROBE_SHARE * self.spent_seconds
        best, best_rate, best_seconds, probe = None, -1.0, 0.0, False
        for plan, tokens, seconds, measured in self.table():
            if not measured and not may_probe:
                continue
            rate = tokens / seconds
            if rate > best_rate * (1 + 1e-9):  # ties go to the cheaper candidate (listed first)
                best, best_rate, best_seconds, probe = plan, rate, seconds, not measured
        self.spent_seconds += best_seconds
        if probe:
            self.probe_seconds += best_seconds
        self.last = best
        return best

    def observe(self, tree, path, depth: int) -> None:
        """Record the pass just verified: the tree of the last :meth:`choose`, grown with ``depth`` passes."""
        if not self._observe_plan(depth):
            return
        self.acceptance.observe(tree, path, self.last.budget, min(depth, self.last.depth))
        self.catch_up = len(path)  # accepted tokens + the target's own: what the draft reads next

    def observe_counts(self, counts, depth: int, emitted: int) -> None:
        """:meth:`observe` from tokens per pass already counted (budgets x depths) and ``emitted`` tokens."""
        if self._observe_plan(depth):
            self.acceptance.observe_counts(counts, self.last.budget, min(depth, self.last.depth))
            self.catch_up = emitted

    def _observe_plan(self, depth: int) -> bool:
        """Note the profile's time for the iteration run; False where it drafted no tree."""
        plan = self.last
        if plan is None or plan.budget == AUTOREGRESSIVE or depth == 0:
            self._predicted = (AUTOREGRESSIVE, self.profile_seconds(TreePlan(AUTOREGRESSIVE, 0)))
            self.acceptance.tick()
            return False
        self._predicted = (plan.budget, self.profile_seconds(TreePlan(plan.budget, min(depth, plan.depth))))
        return True

    def observe_seconds(self, seconds: float) -> None:
        """Record how long the iteration just observed took, choice to commit."""
        if not self.timed or self._predicted is None or not seconds > 0:
            return
        budget, predicted = self._predicted
        self._predicted = None
        bound = math.log(MAX_TIME_RATIO)
        step = min(max(math.log(seconds / predicted), -bound), bound)
        old = TIME_MEMORY * self._ratio_weight.get(budget, 0.0)  # the first iterations count alike, later
        self._ratio_weight[budget] = old + 1.0                    # ones weigh 1 against the past's <= 10
        self.log_ratio[budget] = (old * self.log_ratio.get(budget, 0.0) + step) / (old + 1.0)


class FixedBudget:
    """The same tree every pass: the configuration's own budget and depth cap."""

    def __init__(self, budget: int, depth: int):
        self.plan = TreePlan(budget, depth)

    def choose(self) -> TreePlan:
        return self.plan

    def observe(self, tree, path, depth: int) -> None:
        pass

    def observe_seconds(self, seconds: float) -> None:
        pass
