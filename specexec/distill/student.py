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
    student.load_state_dict(load, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    if student.get_input_embeddings().weight.shape != target.get_input_embeddings().weight.shape:
        raise ConfigError("the draft's vocabulary and embedding size must match the target's")
    freeze_shared(student)
    return student.to(next(target.parameters()).device)


def freeze_shared(student) -> None:
    """Embeddings and LM head stay the target's: not trained."""
    for module in (student.get_input_embeddings(), student.get_output_embeddings()):
        for p in module.parameters():
            p.requires_grad_(False)


def trainable_state(student) -> dict[str, torch.Tensor]:
    names = {n for n, p in student.named_parameters() if p.requires_grad}
    return {k: v for k, v in student.state_dict().items() if k in names}
