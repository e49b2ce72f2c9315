"""Small pieces of the server and the chat: stop strings on streamed text, acceptance by depth."""

from __future__ import annotations

import random

from specexec.commands.chat import acceptance_by_depth
from specexec.server.metrics import ServerMetrics
from specexec.server.stops import StopMatcher


def test_stop_strings_against_a_plain_cut():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab cé") for _ in range(rng.randint(0, 24)))
        stops = ["".join(rng.choice("ab cé") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        matcher, shown, start = StopMatcher(stops), "", 0
        for cut in cuts + [len(text)]:
            shown += matcher.add(text[start:cut])
            start = cut
        shown += matcher.flush()
        found = [text.find(s) for s in stops if s in text]
        assert shown == (text[: min(found)] if found else text), (text, stops, cuts)
        assert matcher.stopped == bool(found)


def test_text_is_held_back_only_while_it_may_start_a_stop():
    m = StopMatcher(["</end>"])
    assert m.add("hello </") == "hello "
    assert m.add("b>") == "</b>"
    assert m.add(" x</en") == " x"
    assert m.add("d> more") == "" and m.stopped and m.flush() == ""


def test_acceptance_by_depth():
    # passes emitting 1, 2, 3, 3 tokens accepted 0, 1, 2, 2 draft tokens
    assert acceptance_by_depth([1, 2, 3, 3]) == [(1, 3, 0.75), (2, 2, 2 / 3)]
    assert acceptance_by_depth([1, 1]) == [] and acceptance_by_depth([]) == []


def test_metrics_by_depth():
    m = ServerMetrics()
    m.record_generation(prompt_tokens=5, accepted_per_pass=[1, 2, 3, 3], drafted=40)
    text = m.render().decode()
    for line in ('specexec_accepted_at_depth_total{depth="1"} 3.0', 'specexec_accepted_at_depth_total{depth="2"} 2.0',
                 "specexec_target_passes_total 4.0", "specexec_generated_tokens_total 9.0",
                 "specexec_accepted_tokens_total 5.0", "specexec_drafted_tokens_total 40.0",
                 "specexec_prompt_tokens_total 5.0"):
        assert line in text, line
