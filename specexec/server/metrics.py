"""Prometheus metrics of one server (its own registry, served at ``GET /metrics``).

Acceptance by tree depth: ``specexec_accepted_at_depth_total{depth="d"}`` counts target
passes whose accepted path held at least ``d`` draft tokens; divided by the count at depth
``d - 1`` (depth 0 = ``specexec_target_passes_total``) it is the rate at which the target
agrees with the draft at depth ``d`` given agreement above it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST"]

disable_created_metrics()  # no *_created series: they double the output and carry nothing here


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("specexec_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("specexec_prompt_tokens", "Prompt tokens of generations run", registry=r)
        self.generated_tokens = Counter("specexec_generated_tokens", "Tokens generated", registry=r)
        self.target_passes = Counter("specexec_target_passes", "Target forward passes (after prefill)", registry=r)
        self.drafted_tokens = Counter("specexec_drafted_tokens", "Draft tokens put in trees for the target",
                                      registry=r)
        self.accepted_tokens = Counter("specexec_accepted_tokens",
                                       "Draft tokens the target accepted (the target's own token per pass excluded)",
                                       registry=r)
        self.accepted_per_pass = Histogram("specexec_accepted_tokens_per_pass",
                                           "Tokens emitted per target pass (accepted draft tokens + 1)",
                                           buckets=(1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64, 128), registry=r)
        self.accepted_at_depth = Counter("specexec_accepted_at_depth",
                                         "Target passes whose accepted path reached this tree depth", ["depth"],
                                         registry=r)
        self.queue_length = Gauge("specexec_queue_length", "Requests waiting for the engine", registry=r)
        self.running = Gauge("specexec_running", "Requests being generated (0 or 1)", registry=r)
        self.cancelled = Counter("specexec_cancelled", "Generations stopped early, by reason", ["reason"], registry=r)
        self.first_token_seconds = Histogram("specexec_time_to_first_token_seconds",
                                             "From request arrival to the first generated tokens", registry=r)
        self.request_seconds = Histogram("specexec_request_seconds", "From arrival to the last token", registry=r)

    def record_generation(self, prompt_tokens: int, accepted_per_pass: list[int], drafted: int) -> None:
        """Account one generation (also a partial one) from its per-pass accepted counts."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(sum(accepted_per_pass))
        self.target_passes.inc(len(accepted_per_pass))
        self.drafted_tokens.inc(drafted)
        for a in accepted_per_pass:
            self.accepted_per_pass.observe(a)
            self.accepted_tokens.inc(max(0, a - 1))
            for depth in range(1, a):
                self.accepted_at_depth.labels(str(depth)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
