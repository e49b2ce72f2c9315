"""The preallocated KV cache: forward passes on top of it equal full recomputation, and a
commit keeps exactly the chosen entries."""

import torch

from specexec.kv_cache import SlotCache
from specexec.runner import ModelRunner

from conftest import tiny_model


@torch.no_grad()
def test_commit_keeps_chosen_path_and_matches_recomputation():
    model = tiny_model("llama", seed=3)
    runner = ModelRunner(model, capacity=4)  # tiny capacity: the buffers must grow
    prefix = torch.tensor([5, 9, 2, 7])
    runner.forward_chain(prefix[:-1], 0)
    runner.commit(torch.arange(3))
    # a tree: root 7 with children 11, 12; 11 has child 13
    tokens = torch.tensor([7, 11, 12, 13])
    parents = [-1, 0, 0, 1]
    anc = torch.zeros(4, 4, dtype=torch.bool)
    for i in range(4):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = parents[j]
    depth = torch.tensor([0, 1, 1, 2])
    visible = torch.cat([torch.ones(4, 3, dtype=torch.bool), anc], dim=1)
    logits = runner.forward(tokens, 3 + depth, visible)
    for node, path in [(1, [7, 11]), (2, [7, 12]), (3, [7, 11, 13])]:
        full = model(torch.tensor([[5, 9, 2] + path])).logits[0, -1]
        assert torch.allclose(logits[node], full, atol=1e-10)
    # keep root -> 11 -> 13 (cache positions 3, 4, 6) and continue with one more token
    runner.commit(torch.tensor([3, 4, 6]))
    assert runner.committed == 6 and runner.cache_len == 6
    nxt = runner.forward_chain(torch.tensor([8]), 6)
    full = model(torch.tensor([[5, 9, 2, 7, 11, 13, 8]])).logits[0, -1]
    assert torch.allclose(nxt[0], full, atol=1e-10)
    runner.rollback()
    assert runner.cache_len == 6


def test_buffers_are_reused_not_reallocated():
    model = tiny_model("llama", seed=3)
    runner = ModelRunner(model, capacity=64)
    runner.forward_chain(torch.tensor([1, 2, 3]), 0)
    runner.commit(torch.arange(3))
    layer = runner.cache.layers[0]
    buf = layer._k.data_ptr()
    for step in range(10):
        runner.forward_chain(torch.tensor([4, 5]), runner.committed)
        runner.commit(torch.tensor([runner.committed]))
    assert layer._k.data_ptr() == buf
    assert runner.committed == 13
    assert isinstance(runner.cache, SlotCache)
