"""Top-p / top-k filtering against reference implementations, and the samplers."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from specexec.config import SamplingConfig
from specexec.sampling import filter_logits, probabilities, sample, sample_distinct


def reference_top_p(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Plain loop: keep the most likely tokens until their mass reaches top_p."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    keep = np.zeros_like(probs, dtype=bool)
    mass = 0.0
    for i in np.argsort(-probs, kind="stable"):
        keep[i] = True
        mass += probs[i]
        if mass >= top_p:
            break
    return keep


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("scale", [0.3, 1.0, 5.0])  # flat to peaked
def test_top_p_matches_references(top_p, scale):
    gen = torch.Generator().manual_seed(int(top_p * 1000 + scale * 10))
    logits = torch.randn(16, 50, generator=gen, dtype=torch.float64) * scale
    ours = torch.isfinite(filter_logits(logits, top_p=top_p))
    for row in range(logits.shape[0]):
        ref = reference_top_p(logits[row].numpy(), top_p)
        assert ours[row].numpy().tolist() == ref.tolist()
    hf = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
    assert torch.equal(ours, hf)


def test_top_p_keeps_the_best_token_on_flat_and_peaked_rows():
    flat = torch.zeros(1, 10, dtype=torch.float64)
    assert int(torch.isfinite(filter_logits(flat, top_p=0.5)).sum()) == 5
    peaked = torch.tensor([[10.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    kept = torch.isfinite(filter_logits(peaked, top_p=0.9))
    assert kept.tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("k", [1, 3, 10, 50, 100])
def test_top_k_matches_transformers(k):
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    ours = torch.isfinite(filter_logits(logits, top_k=k))
    hf = torch.isfinite(TopKLogitsWarper(k)(None, logits.clone()))
    assert torch.equal(ours, hf)
    assert int(ours[0].sum()) == min(k, 50)


def test_probabilities_apply_temperature_then_filters():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    p = probabilities(logits, SamplingConfig(temperature=0.5, top_p=1.0, top_k=2))
    want = torch.softmax(torch.tensor([4.0, 2.0], dtype=torch.float64), -1)
    assert torch.allclose(p[:2], want) and p[2:].sum() == 0
    greedy = probabilities(logits, SamplingConfig(temperature=0))
    assert greedy.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sample_frequencies():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    draws = sample(probs.expand(20000, 4), gen)
    freq = torch.bincount(draws, minlength=4).double() / 20000
    assert torch.allclose(freq, probs, atol=0.015)
    assert freq[3] == 0


def test_sample_distinct_is_sequential_sampling_without_replacement():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    pairs = {}
    n = 20000
    for _ in range(n):
        toks, valid = sample_distinct(probs, 2, gen)
        assert valid.all()
        pairs[tuple(toks.tolist())] = pairs.get(tuple(toks.tolist()), 0) + 1
    # P(a then b) = p_a * p_b / (1 - p_a)
    for (a, b), count in pairs.items():
        expect = probs[a] * probs[b] / (1 - probs[a])
        assert abs(count / n - float(expect)) < 0.015
    toks, valid = sample_distinct(probs, 4, gen)
    assert valid.tolist() == [True, True, True, False]


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1), dict(temperature=-1.0),
                                 dict(top_k=-2), dict(temperature=float("nan"))])
def test_bad_sampling_settings_are_refused(bad):
    from specexec.errors import ConfigError

    with pytest.raises(ConfigError):
        SamplingConfig(**bad)
