"""Shared fixtures: tiny random models of many architectures, the embedded SmolLM2 target,
and prompts from the shared datasets."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

# Tests start model processes of their own (CLI, servers) on few cores: OpenMP threads that
# spin while waiting would take the cores from each other. Set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

import transformers

transformers.logging.set_verbosity_error()

REPO = Path(__file__).resolve().parents[1]
# SPECEXEC_TEST_DEVICE=cuda: the tiny-model exactness modules (test_exact_architectures.py,
# test_sliding_window.py, test_rope_scaling.py) build their models, resident, on that device (they pass
# device=TEST_DEVICE to tiny_model); every other module builds its models on the CPU
TEST_DEVICE = os.environ.get("SPECEXEC_TEST_DEVICE", "cpu")
DATASETS = Path(os.environ.get("SPECEXEC_DATASETS", REPO.parent / "shared" / "datasets"))


def pytest_configure(config):
    try:
        device = torch.device(TEST_DEVICE)
    except (RuntimeError, ValueError):
        raise pytest.UsageError(f"SPECEXEC_TEST_DEVICE={TEST_DEVICE!r} is not a torch device (cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"SPECEXEC_TEST_DEVICE={TEST_DEVICE}: this machine has no CUDA GPU")


# family -> config class name and the keyword arguments of a tiny model. Special attention
# features are on: windows of 8 positions (much shorter than the tests' prompts plus
# generations), mixed full / sliding layers where the family has them.
WINDOW = 8
TINY_FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    # untied heads: a tiny tied Gemma (embeddings scaled by sqrt(hidden)) just repeats its last token
    "gemma": ("GemmaConfig", {"head_dim": 8, "tie_word_embeddings": False}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "sliding_window": WINDOW, "tie_word_embeddings": False,
                                "layer_types": ["sliding_attention", "full_attention"]}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": WINDOW, "tie_word_embeddings": False,
                                         "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW}),
    "gpt2": ("GPT2Config", {}),
    "gpt_neox": ("GPTNeoXConfig", {}),
    "opt": ("OPTConfig", {}),
}
# families whose transformers implementation refuses sdpa attention
EAGER_FAMILIES = {"gemma2"}

# every method, SpecExec at budgets 1 / 16 / 128: the settings of the exactness tests
EVERY_METHOD = [
    ("specexec", dict(max_budget=1)),
    ("specexec", dict(max_budget=16, max_n_beams=4, max_branch_width=4, max_beam_len=8)),
    ("specexec", dict(max_budget=128, max_n_beams=16, max_branch_width=8, max_beam_len=12)),
    ("specinfer", dict(max_n_beams=4, max_beam_len=6)),
    ("chain", dict(max_beam_len=8)),
    ("autoregressive", dict()),
]


def tiny_config(family: str, vocab: int = 64, layers: int = 2, hidden: int = 32, max_positions: int = 512,
                **extra):
    name, kwargs = TINY_FAMILIES[family]
    cls = getattr(transformers, name)
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"):
        common["num_key_value_heads"] = 2
    if family == "gpt2":
        common = dict(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=max_positions,
                      bos_token_id=None, eos_token_id=None)
    if family == "opt":
        common.update(ffn_dim=2 * hidden, word_embed_proj_dim=hidden)
        common.pop("intermediate_size")
    common.update(kwargs)
    common.update(extra)
    if "layer_types" in common:  # the family's pattern, repeated over the layers
        pattern = list(common["layer_types"])
        common["layer_types"] = [pattern[i % len(pattern)] for i in range(common.get("num_hidden_layers", layers))]
    return cls(**common)


def tiny_model(family: str = "llama", seed: int = 0, dtype=torch.float64, device="cpu", **kwargs):
    torch.manual_seed(seed)
    config = tiny_config(family, **kwargs)
    attn = "eager" if family in EAGER_FAMILIES else "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.to(dtype).to(device).eval()


def greedy_reference(model, prompt_ids: list[int], max_new_tokens: int, eos_ids=None) -> list[int]:
    """The target's own greedy decoding with transformers' generate."""
    ids = torch.tensor([prompt_ids], device=model.device)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, min_new_tokens=0)
    kwargs["eos_token_id"] = sorted(eos_ids) if eos_ids else None
    kwargs["pad_token_id"] = (sorted(eos_ids)[0] if eos_ids else 0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out[0, len(prompt_ids):].tolist()


def top2(model, ids: list[int]) -> tuple[float, float]:
    """The two largest next-token logits of ``model`` after ``ids``."""
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].double()
    top = torch.topk(logits, 2).values
    return float(top[0]), float(top[1])


def top2_gap(model, ids: list[int]) -> float:
    """Gap between the two largest next-token logits of ``model`` after ``ids``."""
    first, second = top2(model, ids)
    return first - second


class TieWarning(UserWarning):
    """A greedy comparison accepted a divergence at a numerical tie (listed in pytest's summary)."""


def assert_greedy_equal(model, prompt_ids, got, want, label="", relative_tie: float | None = None):
    """Equal token for token, or diverging only at a numerical tie of the target: a top-2 gap under 1e-4,
    or under ``relative_tie`` times the larger logit's size (at least 1) for low-precision models."""
    if got == want:
        return
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    if i < min(len(got), len(want)):
        first, second = top2(model, list(prompt_ids) + want[:i])
        gap = first - second
        tie = 1e-4 if relative_tie is None else relative_tie * max(abs(first), 1.0)
        assert gap < tie, f"{label}: diverged at token {i} ({got[i]} vs {want[i]}) with top-2 gap {gap:.3g}"
        warnings.warn(f"{label}: diverged at a tie at token {i} (top-2 gap {gap:.3g})", TieWarning)
    else:
        raise AssertionError(f"{label}: lengths differ ({len(got)} vs {len(want)}) without divergence")


def load_prompts(name: str) -> list[tuple[int, str]]:
    path = DATASETS / f"{name}_prompts.json"
    if not path.exists():
        pytest.fail(f"prompt set {path} not found; set SPECEXEC_DATASETS to the datasets folder")
    return [(int(i), str(t)) for i, t in json.loads(path.read_text())]


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct target, float32."""
    from specexec.models import load_model

    loaded = load_model("embedded", dtype="float32")
    return loaded.model, loaded.tokenizer
