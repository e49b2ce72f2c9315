"""Which models the engine can drive exactly, and a one-line refusal for the rest.

The engine scores a tree by handing the model a 4D attention mask, explicit positions and a
key/value cache it edits. That needs attention over cached keys that follows the mask and
positions given: not ALiBi biases derived from the 2D padding mask, not a recurrent state
(Mamba, RWKV and hybrids), not an encoder-decoder. :func:`check_drivable` refuses those by
their configuration, then runs a probe: a two-branch tree over a short cached prefix must give
the logits of plain forward passes along each branch.
"""

from __future__ import annotations

import math

import torch

from .draft_vocab import output_vocab_size
from .errors import UnsupportedModelError

ALIBI = {"bloom", "mpt", "jais", "baichuan"}
RECURRENT = {
    "mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba", "falcon_h1", "nemotron_h",
    "granitemoehybrid", "lfm2", "lfm2_moe", "xlstm", "recurrent_gemma", "qwen3_next", "minimax", "olmo_hybrid",
}
PROBE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}


def _refuse(name: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{name} cannot be decoded exactly with tree attention: {why}")


def check_config(model) -> None:
    """Refuse architectures the engine cannot drive, by their configuration."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = getattr(text, "model_type", "") or type(model).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(name, "it is an encoder-decoder model (use a decoder-only causal LM)")
    if name in RECURRENT or getattr(text, "ssm_state_size", None):
        raise _refuse(name, "its layers keep a recurrent state, not a key/value cache a tree can branch")
    if name in ALIBI or getattr(text, "alibi", False) or getattr(text, "position_embedding_type", "") == "alibi":
        raise _refuse(name, "ALiBi position biases are derived from a padding mask, not from tree positions")


@torch.no_grad()
def probe(model) -> None:
    """Refuse a model whose tree pass does not reproduce plain forward passes."""
    from .runner import ModelRunner

    name = getattr(model.config, "model_type", "") or type(model).__name__
    device = next(model.parameters()).device
    vocab = output_vocab_size(model)
    prefix = [i % vocab for i in (1, 2, 3)]
    a, b = 4 % vocab, 5 % vocab
    try:
        runner = ModelRunner(model, capacity=8)
        runner.forward_chain(torch.tensor(prefix[:2], device=device), 0)
        runner.commit(torch.arange(2, device=device))
        # tree: root (the last prefix token) with two children a and b
        visible = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 1]], dtype=torch.bool, device=device)
        tree = runner.forward(torch.tensor([prefix[2], a, b], device=device), torch.tensor([2, 3, 3], device=device),
                              visible).float()
        plain_a = model(input_ids=torch.tensor([prefix + [a]], device=device)).logits[0].float()
        plain_b = model(input_ids=torch.tensor([prefix + [b]], device=device)).logits[0].float()
    except Exception as err:  # noqa: BLE001 - any failure here is the model refusing our inputs
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise _refuse(name, f"its forward pass rejects a 4D tree mask with a cache ({type(err).__name__}: {first})")
    scored = torch.isfinite(plain_a[2])  # a reduced draft head leaves -inf outside its tokens
    tol = PROBE_TOLERANCE.get(runner.dtype, 0.05) * (1.0 + float(plain_a[:, scored].abs().max()))
    for got, want in ((tree[0], plain_a[2]), (tree[1], plain_a[3]), (tree[2], plain_b[3])):
        same_support = bool((torch.isfinite(got) == scored).all() and (torch.isfinite(want) == scored).all())
        diff = float((got[scored] - want[scored]).abs().max()) if same_support else math.inf
        if not diff <= tol:
            raise _refuse(name, f"a tree pass differs from plain passes along its branches (max diff {diff:.3g})")


def check_drivable(model) -> None:
    check_config(model)
    probe(probe_stand_in(model))


def probe_stand_in(model):
    """The model the probe runs on. A model whose layers are streamed would read every layer four times
    (a minute for a 13B model on disk), so its probe runs on a one-layer model of the same class and
    configuration that shares the streamed model's embeddings, head and buffers and holds its first
    layer read from the checkpoint (the streamed pass's own exactness is what the offload tests check)."""
    if getattr(model, "specexec_offload", None) is None:
        return model
    from .quantize import describe

    if describe(model) is None:
        try:
            return _first_layer_view(model)
        except (KeyError, RuntimeError, ValueError):
            pass  # an architecture whose names do not line up: a plain truncated copy
    from .models import truncated_copy

    return truncated_copy(model, 1)


def _first_layer_view(model):
    import copy

    from transformers import AutoModelForCausalLM

    from .offload import resident_state_dict

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 1
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:1]
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(config, dtype=model.get_input_embeddings().weight.dtype)
    source = resident_state_dict(model, 1)  # the model's own tensors, layer 0 read from disk
    view.load_state_dict({k: source[k] for k in view.state_dict()}, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for name, buf in list(view.named_buffers()):
        if buf.is_meta:  # computed at init (rotary frequencies): the model's own
            owner, _, leaf = name.rpartition(".")
            view.get_submodule(owner).register_buffer(leaf, buffers[name], persistent=False)
    for name, module in view.named_modules():  # plain tensor attributes computed at init, likewise
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, attr, getattr(model.get_submodule(name), attr))
    return view.eval()
