"""The distilled draft shipped with the package for the embedded SmolLM2-135M-Instruct target.

The folder ``specexec/data/drafts/smollm2-135m-instruct`` holds the draft's config, its
own tensors (decoder layers and final norm, float16) and, when it has one, the token ranking of
its reduced output head (:mod:`specexec.draft_vocab`). Its embeddings and LM head are the
target's (tied, frozen during distillation), so they are not stored: :func:`load_shipped_draft`
takes them from the loaded target, and the draft uses the target's tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import ModelLoadError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "drafts" / "smollm2-135m-instruct"
WEIGHTS = "draft_layers.safetensors"


def _fingerprint(target) -> float:
    """A cheap check that a target's embeddings are the ones the draft was trained with."""
    w = target.get_input_embeddings().weight
    return float(w.detach()[:64].double().sum())


def _fingerprint_tolerance(target, expected: float) -> float:
    """How far the fingerprint may move when the target is stored in a lower precision: rounding every
    value moves the sum by about eps * sqrt(sum of squares); a different model's sum moves by far more."""
    w = target.get_input_embeddings().weight.detach()[:64]
    eps = torch.finfo(w.dtype).eps if w.dtype.is_floating_point else 0.0
    return 1e-3 * max(1.0, abs(expected)) + 4 * eps * float(w.double().pow(2).sum().sqrt())


def export_shipped(draft, target, dest: Path = SHIPPED_DIR, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``draft`` without the tensors it shares with ``target`` (its embeddings and head)."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    shared = {id(p) for m in (draft.get_input_embeddings(), draft.get_output_embeddings()) for p in m.parameters()}
    tensors = {}
    for name, p in draft.named_parameters(remove_duplicate=False):
        if id(p) not in shared:
            tensors[name] = p.detach().to(dtype).contiguous().cpu()
    config = draft.config
    config.specexec_target_fingerprint = _fingerprint(target)
    config.to_json_file(dest / "config.json")
    save_file(tensors, dest / WEIGHTS, metadata={"format": "pt", "shared_with_target": "embeddings,lm_head"})
    return dest


def shipped_available(folder: Path = SHIPPED_DIR) -> bool:
    return (folder / "config.json").exists() and (folder / WEIGHTS).exists()


def load_shipped_draft(target, folder: Path = SHIPPED_DIR) -> torch.nn.Module:
    """The shipped draft for ``target`` (a model), in the target's dtype and on its device."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    if not shipped_available(folder):
        raise ModelLoadError(f"no shipped draft in {folder}")
    config = AutoConfig.from_pretrained(folder)
    expected = getattr(config, "specexec_target_fingerprint", None)
    if expected is not None and abs(_fingerprint(target) - expected) > _fingerprint_tolerance(target, expected):
        raise ModelLoadError("the shipped draft was distilled from a different target")
    param = next(target.parameters())
    with no_init_weights():
        draft = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
    own = load_file(folder / WEIGHTS)
    state = {k: v.to(param.dtype) for k, v in own.items()}
    state[_name_of(draft, draft.get_input_embeddings())] = target.get_input_embeddings().weight.detach()
    missing, unexpected = draft.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != _name_of(draft, draft.get_output_embeddings())]
    if missing or unexpected:
        raise ModelLoadError(f"shipped draft does not match its config: missing {missing[:3]}, extra {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        draft.tie_weights()
    else:
        draft.get_output_embeddings().weight.data.copy_(target.get_output_embeddings().weight)
    return draft.to(param.device).eval()


def _name_of(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return f"{name}.weight"
    raise ModelLoadError("module not found")


def export_from_folder(folder: str | Path, target_name: str = "embedded", dest: Path = SHIPPED_DIR) -> Path:
    """Write the output folder of ``specexec distill`` as the shipped (embedding-less) draft."""
    from ..models import load_model

    target = load_model(target_name, dtype="float32", with_tokenizer=False).model
    draft = load_model(str(folder), dtype="float32", with_tokenizer=False).model
    if not torch.equal(draft.get_input_embeddings().weight, target.get_input_embeddings().weight):
        raise ModelLoadError(f"{folder} does not share its embeddings with {target_name}: it cannot be shipped stripped")
    dest = export_shipped(draft, target, dest)
    from ..draft_vocab import VOCAB_FILE

    (dest / VOCAB_FILE).unlink(missing_ok=True)
    if (Path(folder) / VOCAB_FILE).exists():  # the reduced head's token ranking travels with the draft
        shutil.copyfile(Path(folder) / VOCAB_FILE, dest / VOCAB_FILE)
    return dest


def export_standalone(dest: str | Path, target_name: str = "embedded") -> Path:
    """Write the shipped draft as a plain model folder (embeddings and head filled from the target, its
    tokenizer, its token ranking): a draft any tool loads by path, e.g. for a target widened from the
    embedded one (:mod:`specexec.widen`) or for another runtime."""
    from ..draft_vocab import VOCAB_FILE
    from ..models import load_model

    target = load_model(target_name, dtype="float32")
    draft = load_shipped_draft(target.model)
    dest = Path(dest)
    draft.save_pretrained(dest)
    target.tokenizer.save_pretrained(dest)
    if (SHIPPED_DIR / VOCAB_FILE).exists():
        shutil.copyfile(SHIPPED_DIR / VOCAB_FILE, dest / VOCAB_FILE)
    return dest
