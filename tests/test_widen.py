"""The widened checkpoint (specexec.widen): a bigger Llama whose function is a small one's.

Checked on tiny float32 Llamas: logits of a prompt pass and of a tree pass equal the small model's
(up to summation order), written to disk and read back (resident and streamed), and greedy
SpecExec on the widened model reproduces its own greedy decoding and the small model's."""

import pytest
import torch

from specexec import SpecExecEngine
from specexec.errors import ConfigError
from specexec.runner import ModelRunner
from specexec.widen import widen, widen_model

from conftest import assert_greedy_equal, greedy_reference, tiny_model

# (hidden, intermediate, layers, query heads, key/value heads) beside the tiny Llama's (32, 64, 2, 4, 2)
SHAPES = {
    "mha": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=8),
    "gqa": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=6,
                num_key_value_heads=3),
}


def small():
    return tiny_model("llama", seed=1, initializer_range=0.4, dtype=torch.float32)


def tree_logits(model, prompt):
    """A prompt pass, then one pass over a tree of 5 nodes (two branches) on top of it."""
    runner = ModelRunner(model)
    first = runner.forward_chain(torch.tensor(prompt), 0)
    runner.commit(torch.arange(len(prompt)))
    tokens = torch.tensor([5, 9, 11, 9, 3])
    parents = [-1, 0, 0, 1, 2]
    depth = torch.tensor([0, 1, 1, 2, 2])
    anc = torch.zeros(5, 5, dtype=torch.bool)
    for i, p in enumerate(parents):
        anc[i, i] = True
        while p >= 0:
            anc[i, p] = True
            p = parents[p]
    visible = torch.cat([torch.ones(5, len(prompt), dtype=torch.bool), anc], dim=1)
    return first, runner.forward(tokens, len(prompt) + depth, visible)


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_widened_logits_equal_the_small_models(shape):
    base = small()
    big = widen_model(base, SHAPES[shape])
    assert big.config.hidden_size == 48 and sum(p.numel() for p in big.parameters()) > 2 * sum(
        p.numel() for p in base.parameters())
    prompt = [3, 17, 42, 8, 8, 1, 60]
    for want, got in zip(tree_logits(base, prompt), tree_logits(big, prompt)):
        assert close(got, want), float((got - want).abs().max())


def test_the_padded_dimensions_change_something_if_the_norms_are_not_rescaled():
    """The norm rescaling is what makes it exact: without it the logits differ."""
    base = small()
    big = widen_model(base, SHAPES["mha"])
    with torch.no_grad():
        big.model.layers[0].input_layernorm.weight.mul_(2.0)
    prompt = [3, 17, 42, 8]
    assert not close(tree_logits(big, prompt)[0], tree_logits(base, prompt)[0])


def test_written_checkpoint_loads_resident_and_streamed(tmp_path):
    from transformers import AutoModelForCausalLM

    from specexec.models import load_model

    base = small()
    base.save_pretrained(tmp_path / "small")
    widen(tmp_path / "small", tmp_path / "big", SHAPES["gqa"], dtype=torch.float32, log=lambda *_: None)
    files = sorted(p.name for p in (tmp_path / "big").glob("*.safetensors"))
    assert len(files) == 4 + 1  # a file per decoder layer and one for the rest
    resident = AutoModelForCausalLM.from_pretrained(tmp_path / "big", dtype=torch.float32).eval()
    assert not resident.config.tie_word_embeddings
    streamed = load_model(str(tmp_path / "big"), dtype="float32", offload="disk", with_tokenizer=False).model
    assert streamed.specexec_offload is not None
    prompt = [3, 17, 42, 8, 8, 1]
    want = tree_logits(base, prompt)
    for model in (resident, streamed):
        for w, g in zip(want, tree_logits(model, prompt)):
            assert close(g, w)


def test_greedy_specexec_on_the_widened_model_is_its_own_and_the_small_models_decoding():
    base = small()
    big = widen_model(base, SHAPES["mha"])
    draft = tiny_model("llama", seed=2, initializer_range=0.4, dtype=torch.float32, layers=1)
    prompt = [3, 17, 42, 8]
    own = greedy_reference(big, prompt, 20)
    assert_greedy_equal(base, prompt, own, greedy_reference(base, prompt, 20), "widened vs small")
    engine = SpecExecEngine(big, None, draft)
    for method, settings in [("specexec", dict(max_budget=16, max_n_beams=4, max_branch_width=4, max_beam_len=6)),
                             ("autoregressive", {})]:
        got = engine.generate(prompt, method=method, max_new_tokens=20, temperature=0.0, **settings)
        assert_greedy_equal(big, prompt, got.token_ids, own, f"widened/{method}")


@pytest.mark.parametrize("shape,message", [
    (dict(SHAPES["mha"], hidden_size=16), "smaller"),
    (dict(SHAPES["gqa"], num_attention_heads=8, num_key_value_heads=2), "group size"),
])
def test_bad_shapes_are_refused(shape, message):
    with pytest.raises(ConfigError, match=message):
        widen_model(small(), shape)


def test_other_architectures_are_refused():
    with pytest.raises(ConfigError, match="Llama"):
        widen_model(tiny_model("mistral", dtype=torch.float32), SHAPES["mha"])
