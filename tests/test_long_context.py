"""Generation across more than 4096 total tokens still equals greedy decoding (the fp16
path-counting defect of earlier code broke past 2048)."""

import torch

from specexec import SpecExecEngine
from specexec.models import truncated_copy

from conftest import assert_greedy_equal, greedy_reference, tiny_model


def test_long_context_greedy_exact():
    target = tiny_model("llama", seed=5, max_positions=8192, initializer_range=0.4)
    draft = truncated_copy(target, 1)
    prompt = torch.randint(0, 64, (4060,), generator=torch.Generator().manual_seed(0)).tolist()
    want = greedy_reference(target, prompt, 80)
    engine = SpecExecEngine(target, None, draft)
    for method, kw in [("specexec", dict(max_budget=64, max_beam_len=8)),
                       ("specinfer", dict(max_n_beams=4, max_beam_len=4))]:
        res = engine.generate(prompt, method=method, max_new_tokens=80, **kw)
        assert len(prompt) + len(res.token_ids) > 4096 + 40
        assert_greedy_equal(target, prompt, res.token_ids, want, method)
