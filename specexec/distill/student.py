"""The student: a small draft built from the target, sharing its vocabulary.

Three designs: the target's first K decoder layers (``layers=K``); chosen target layers
(``layer_ids=[0, 1, 29]``: spread-out layers keep some of the deep layers' work); or any
Hugging Face config (``config_path``), with every tensor whose name and shape match the
target's copied from it. Embeddings and LM head are the target's and stay frozen, so only
the decoder layers and final norm are trained (and a shipped copy need not store them).
"""

from __future__ import annotations

import copy
import re

import torch

from ..errors import ConfigError

_LAYER_KEY = re.compile(r"^(.*?\.(?:layers|h|layer)\.)(\d+)(\..*)$")


def build_student(target, *, layers: int | None = None, layer_ids: list[int] | None = None,
                  config_path: str | None = None) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = next(target.parameters()).dtype
    total = target.config.num_hidden_layers
    if config_path is not None:
        config = AutoConfig.from_pretrained(config_path)
        mapping = None
    else:
        if layer_ids is None:
            layer_ids = list(range(layers or 2))
        if not layer_ids or min(layer_ids) < 0 or max(layer_ids) >= total:
            raise ConfigError(f"draft layers must be between 0 and {total - 1}, got {layer_ids}")
        config = copy.deepcopy(target.config)
        config.num_hidden_layers = len(layer_ids)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in layer_ids]
        mapping = {new: old for new, old in enumerate(layer_ids)}
    torch.manual_seed(0)  # the parts not copied from the target (only with config_path)
    student = AutoModelForCausalLM.from_config(config, dtype=dtype)
    source = target.state_dict()
    own = student.state_dict()
    load = {}
    for key, value in own.items():
        src = key
        m = _LAYER_KEY.match(key)
        if m and mapping is not None:
            src = f"{m.group(1)}{mapping[int(m.group(2))]}{m.group(3)}"
        if src in source and source[src].shape == value.shape:
            load[key] = source[src].clone()
        elif mapping is not None:
            raise ConfigError(f"cannot build the draft: the target has no tensor {src}")
    _finish(student, load)
    if student.get_input_embeddings().weight.shape != target.get_input_embeddings().weight.shape:
        raise ConfigError("the draft's vocabulary and embedding size must match the target's")
    return student.to(next(target.parameters()).device)


def _finish(model, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into a freshly built draft, tie its head if its config says so, freeze the shared parts."""
    model.load_state_dict(state, strict=False)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    freeze_shared(model)


def freeze_shared(student) -> None:
    """Embeddings and LM head stay the target's: not trained."""
    for module in (student.get_input_embeddings(), student.get_output_embeddings()):
        for p in module.parameters():
            p.requires_grad_(False)


def trainable_state(student) -> dict[str, torch.Tensor]:
    names = {n for n, p in student.named_parameters() if p.requires_grad}
    return {k: v for k, v in student.state_dict().items() if k in names}


# the projections that write a decoder layer's attention and MLP results into the residual stream
_OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "c_proj", "fc2", "w2", "dense_4h_to_h")


def parse_insertions(spec: list[str] | None) -> list[tuple[int, int]]:
    """``["2:28", ...]`` -> ``[(2, 28), ...]``: put target layer 28 at position 2 of the draft."""
    out = []
    for item in spec or []:
        pos, sep, src = item.partition(":")
        if not sep or not pos.strip().isdigit() or not src.strip().isdigit():
            raise ConfigError(f"--add-layer takes POSITION:TARGET_LAYER (e.g. 2:28), got {item!r}")
        out.append((int(pos), int(src)))
    return out


def insert_layers(student, target, insertions: list[tuple[int, int]]) -> torch.nn.Module:
    """A deeper draft: ``student`` with target layers inserted, the draft's function unchanged.

    Each ``(position, target_layer)`` puts a copy of that target layer at that position of the
    new layer stack (positions count in the new stack, in the order given). The copy's output
    projections (attention and MLP) start at zero, so the new layer adds nothing to the residual
    stream and the grown draft computes exactly what ``student`` did; training then gives it
    a share of the work (its other weights, the target's, are where it starts from).
    """
    from transformers import AutoModelForCausalLM

    if not insertions:
        return student
    total = target.config.num_hidden_layers
    # new stack: ("student", i) or ("target", j)
    stack: list[tuple[str, int]] = [("student", i) for i in range(student.config.num_hidden_layers)]
    for pos, src in insertions:
        if not 0 <= src < total:
            raise ConfigError(f"--add-layer: the target has layers 0-{total - 1}, got {src}")
        if not 0 <= pos <= len(stack):
            raise ConfigError(f"--add-layer: position {pos} is outside the draft's 0-{len(stack)} layer slots")
        stack.insert(pos, ("target", src))
    config = copy.deepcopy(student.config)
    config.num_hidden_layers = len(stack)
    if getattr(config, "layer_types", None) is not None:
        types_t = target.config.layer_types
        types_s = student.config.layer_types
        config.layer_types = [types_s[i] if who == "student" else types_t[i] for who, i in stack]
    dtype = next(student.parameters()).dtype
    grown = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sources = {"student": student.state_dict(), "target": target.state_dict()}
    load, zeroed = {}, 0
    for key, value in grown.state_dict().items():
        m = _LAYER_KEY.match(key)
        if m is None:
            src_key, who = key, "student"
        else:
            who, idx = stack[int(m.group(2))]
            src_key = f"{m.group(1)}{idx}{m.group(3)}"
        tensor = sources[who].get(src_key)
        if tensor is None or tensor.shape != value.shape:
            raise ConfigError(f"cannot grow the draft: no tensor {src_key} of shape {tuple(value.shape)} "
                              f"in the {who}")
        tensor = tensor.clone()
        if who == "target" and any(f".{name}." in m.group(3) for name in _OUTPUT_PROJECTIONS):
            tensor.zero_()
            zeroed += 1
        load[key] = tensor
    if zeroed < 2 * len(insertions):
        raise ConfigError("cannot grow the draft: its layers' output projections were not recognised")
    _finish(grown, load)
    return grown.to(next(student.parameters()).device)
