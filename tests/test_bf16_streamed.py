"""bfloat16 compute with the target streamed from disk (what dtype "auto" picks on a CPU with native
bfloat16 for a bfloat16 checkpoint): every method's greedy output equals transformers' greedy decoding of
the same checkpoint in bfloat16 on the same CPU, except where the target's two best logits are within
bfloat16's rounding of each other (a tree pass multiplies more rows at once than a one-token pass, and
the summation order differs). Such ties are counted, and must stay rare."""

import warnings

import pytest
import torch

from specexec import SpecExecEngine
from specexec.models import load_model, truncated_copy

from conftest import TieWarning, assert_greedy_equal, greedy_reference, tiny_model

FAMILIES = ["llama", "qwen2", "gemma"]
METHODS = (("specexec", dict(max_budget=32, max_n_beams=4, max_branch_width=4)),
           ("specinfer", dict(max_n_beams=3, max_beam_len=4)),
           ("chain", dict(max_beam_len=4)), ("autoregressive", {}))
PROMPTS = ([3], [9, 4, 33, 2, 17, 8, 1], [5, 5, 12, 40, 7])


# a tie: the two best logits within a few units in the last place of the larger (bfloat16 keeps 8
# significant bits) plus the drift of a few rounded layers
BF16_TIE = 2 ** -5


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(transformers' resident bfloat16 model, the same checkpoint streamed from disk in bfloat16)."""
    folder = tmp_path_factory.mktemp(f"bf16-{request.param}")
    tiny_model(request.param, seed=2, layers=4, initializer_range=0.4, dtype=torch.bfloat16).save_pretrained(
        folder, safe_serialization=True)
    resident = load_model(str(folder), dtype="bfloat16", with_tokenizer=False).model
    streamed = load_model(str(folder), dtype="bfloat16", with_tokenizer=False, offload="disk", device_size=2).model
    yield resident, streamed
    streamed.specexec_offload.close()


def test_the_streamed_layers_compute_in_bfloat16(pair):
    _, streamed = pair
    seen = []
    linear = streamed.model.layers[1].mlp.down_proj
    hook = linear.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.no_grad():
        streamed(torch.tensor([[1, 2, 3]]))
    hook.remove()
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert streamed.get_input_embeddings().weight.dtype == torch.bfloat16


def test_every_method_is_greedy_exact_in_bfloat16_streamed(pair):
    resident, streamed = pair
    engine = SpecExecEngine(streamed, None, truncated_copy(streamed, 2))
    compared, ties = 0, 0
    for prompt in PROMPTS:
        want = greedy_reference(resident, prompt, 20)
        for method, settings in METHODS:
            got = engine.generate(prompt, method=method, max_new_tokens=20, temperature=0.0, **settings)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TieWarning)
                assert_greedy_equal(resident, prompt, got.token_ids, want, f"bf16 {method} {prompt}",
                                    relative_tie=BF16_TIE)
            compared += 1
            ties += sum(issubclass(w.category, TieWarning) for w in caught)
            for w in caught:
                warnings.warn(w.message)
    assert compared == len(PROMPTS) * len(METHODS)
    assert ties <= compared // 4, f"{ties} of {compared} runs diverged at bfloat16 ties"
