"""A target whose generation_config asks for logit processors is decoded as transformers'
generate decodes it (processors applied at every tree node with that node's history); the
settings that are not applied are named at load time."""

import warnings

import pytest
import torch

from specexec import SpecExecEngine
from specexec.models import truncated_copy

from conftest import EVERY_METHOD, assert_greedy_equal, tiny_model

NEW = 20
SETTINGS = EVERY_METHOD
# field -> value; each changes the tiny target's greedy output on the prompts below
PROCESSORS = {
    "repetition_penalty": 1.5,
    "no_repeat_ngram_size": 2,
    "bad_words_ids": "top",  # filled in per model: its most frequent greedy token, and a 2-token sequence
    "sequence_bias": "top",
    "suppress_tokens": "top",
    "begin_suppress_tokens": "first",
    "min_new_tokens": 12,
    "min_length": 14,
    "forced_eos_token_id": "eos",
    "exponential_decay_length_penalty": (4, 3.0),
}


def reference(model, prompt, max_new_tokens=NEW):
    """transformers' generate with the model's own generation_config (no overrides but greedy)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (2, 17)]


def set_processor(model, name, plain, eos):
    gc = model.generation_config
    gc.eos_token_id = eos
    value = PROCESSORS[name]
    tokens = [t for out in plain for t in out]
    top = max(set(tokens), key=tokens.count)
    if name == "bad_words_ids":
        value = [[top], [plain[0][1], plain[0][2]]]
    elif name == "sequence_bias":
        value = [[[top], -4.0], [[plain[1][0], plain[1][1]], 6.0]]
    elif name == "suppress_tokens":
        value = [top]
    elif name == "begin_suppress_tokens":
        value = sorted({out[0] for out in plain})
    elif name == "forced_eos_token_id":
        value = eos
    setattr(gc, name, value)


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=1, initializer_range=0.4)


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_processor_is_applied_exactly(target, name):
    from transformers import GenerationConfig

    target.generation_config = GenerationConfig()
    plain = [reference(target, p) for p in prompts()]
    # an EOS the target emits early, so that minimum lengths have something to hold back; for
    # processors that push EOS up, one it never emits
    unseen = min(set(range(64)) - {t for out in plain for t in out})
    eos = {"forced_eos_token_id": unseen, "exponential_decay_length_penalty": unseen}.get(name, plain[0][2])
    if name not in ("min_new_tokens", "min_length", "exponential_decay_length_penalty", "forced_eos_token_id"):
        eos = None
    target.generation_config.eos_token_id = eos
    baseline = [reference(target, p) for p in prompts()]  # the same EOS, no processor
    set_processor(target, name, plain, eos)
    wants = [reference(target, p) for p in prompts()]
    assert wants != baseline, f"{name} does not change the reference output: the test would prove nothing"
    drafts = {"truncated": truncated_copy(target, 1), "self": target}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a supported processor is not warned about
        engines = {k: SpecExecEngine(target, None, d) for k, d in drafts.items()}
    for draft_name, engine in engines.items():
        for prompt, want in zip(prompts(), wants):
            for method, settings in SETTINGS:
                got = engine.generate(prompt, method=method, max_new_tokens=NEW, **settings)
                assert_greedy_equal(target, prompt, got.token_ids, want, f"{name}/{draft_name}/{method}/{settings}")
    target.generation_config = GenerationConfig()


def test_ignored_settings_are_named_at_load():
    from transformers import GenerationConfig

    target = tiny_model("llama", seed=1)
    target.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, guidance_scale=1.5,
                                                num_beams=4, stop_strings=["\n\n"])
    with pytest.warns(UserWarning) as record:
        engine = SpecExecEngine(target, None, None)
    message = " ".join(str(r.message) for r in record)
    for name in ("do_sample", "temperature", "top_p", "guidance_scale", "num_beams", "stop_strings"):
        assert name in message and name in engine.ignored_generation_settings
    assert "top_k" not in engine.ignored_generation_settings  # left at its default


def test_eos_ids_are_generates_and_a_different_tokenizer_eos_is_named():
    target = tiny_model("llama", seed=1)
    target.generation_config.eos_token_id = [5, 6]
    target.config.eos_token_id = 9  # generate uses the generation config's ids, not this

    class Tok:
        eos_token_id = 11

        def decode(self, ids, skip_special_tokens=True):
            return ""

    with pytest.warns(UserWarning, match="id 11"):
        engine = SpecExecEngine(target, Tok(), None)
    assert engine.eos_ids == {5, 6}
