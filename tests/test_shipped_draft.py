"""The distilled draft shipped with the package: it loads offline from the installed package
as the embedded target's default draft, with its reduced output head, and SpecExec with it
reproduces the target's greedy decoding token for token."""

import pytest
import torch

from specexec import SpecExecEngine
from specexec.distill.data import strip_llama2_template
from specexec.distill.shipped import SHIPPED_DIR, load_shipped_draft, shipped_available
from specexec.draft_vocab import head_tokens, read_vocab
from specexec.models import LoadedModel, default_draft

from conftest import assert_greedy_equal, greedy_reference, load_prompts


def test_shipped_draft_is_in_the_package():
    assert shipped_available(), f"no shipped draft in {SHIPPED_DIR}"
    weights = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir() if p.suffix == ".safetensors")
    assert weights <= 48 * 2**20


@pytest.fixture(scope="module")
def shipped(embedded):
    """The default draft as the engine loads it: the shipped draft with its reduced head."""
    model, tokenizer = embedded
    return default_draft(None, LoadedModel(model, tokenizer, "embedded"))[0]


def test_the_default_draft_computes_in_bfloat16_where_the_cpu_has_it(shipped):
    from specexec.drafts import native_bfloat16

    assert next(shipped.parameters()).dtype == (torch.bfloat16 if native_bfloat16() else torch.float32)


def test_default_draft_of_the_embedded_target_is_the_shipped_one(embedded, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = embedded
    draft, draft_tok = default_draft(None, LoadedModel(model, tokenizer, "embedded"), draft_dtype="float32")
    assert draft_tok is tokenizer
    assert draft.config.num_hidden_layers < model.config.num_hidden_layers
    assert draft.get_input_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert (draft.get_input_embeddings().weight == model.get_input_embeddings().weight).all()
    # its layers are trained, not the target's first layers
    assert not (draft.model.layers[0].mlp.up_proj.weight == model.model.layers[0].mlp.up_proj.weight).all()
    # its head scores the K tokens its ranking stores (and EOS), with the target's rows for them
    stored = read_vocab(SHIPPED_DIR)
    head = draft.get_output_embeddings()
    assert stored["k"] <= head_tokens(draft) <= stored["k"] + len(tokenizer.all_special_ids)
    assert set(stored["ranking"][:stored["k"]]) <= set(head.token_ids.tolist())
    assert torch.equal(head.weight, model.get_output_embeddings().weight[head.token_ids])
    assert head_tokens(load_shipped_draft(model)) == model.config.vocab_size  # the stored draft is whole
    # other targets, or an explicit layer count, keep the truncated copy
    draft, _ = default_draft(None, LoadedModel(model, tokenizer, "embedded"), draft_layers=2)
    assert draft.config.num_hidden_layers == 2


def test_the_shipped_draft_takes_its_target_in_any_precision_and_refuses_another(embedded):
    import copy

    from specexec.errors import ModelLoadError

    model, _ = embedded
    for dtype in (torch.bfloat16, torch.float16):  # rounding moves the embeddings' fingerprint a little
        low = copy.deepcopy(model).to(dtype)
        assert next(load_shipped_draft(low).parameters()).dtype == dtype
        del low
    weight = model.get_input_embeddings().weight
    row = weight.data[3].clone()
    try:
        weight.data[3] += 0.05  # another model's embeddings
        with pytest.raises(ModelLoadError, match="distilled from a different target"):
            load_shipped_draft(model)
    finally:
        weight.data[3] = row


def test_specexec_with_the_shipped_draft_is_greedy_exact(embedded, shipped):
    model, tokenizer = embedded
    engine = SpecExecEngine(model, tokenizer, shipped, draft_tokenizer=tokenizer)
    for i, text in load_prompts("oasst")[:2]:
        prompt = strip_llama2_template(text)
        ids = engine.encode(prompt, chat=True)
        want = greedy_reference(model, ids, 64, eos_ids=engine.eos_ids)
        for budget in (16, "auto"):
            got = engine.generate(prompt, chat=True, method="specexec", max_new_tokens=64, max_budget=budget,
                                  temperature=0.0)
            assert_greedy_equal(model, ids, got.token_ids, want, f"oasst {i} budget {budget}")
