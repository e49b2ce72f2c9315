"""The target checkpoint's ``generation_config`` logit processors, applied at every tree node.

``generate`` runs the processors a checkpoint's ``generation_config`` asks for (repetition
penalty, suppressed tokens, ...) on the scores of each step, given the tokens so far. A tree
node's "tokens so far" are the accepted sequence plus the path to the node, so the
processors run once per tree depth, on the nodes of that depth with their own histories,
and acceptance then sees exactly the scores ``generate`` would have. The processors are
transformers' own, built by its own code, in its order; scores go through them in float32
as in ``generate``.

Applied (each depends only on the history and the scores): repetition_penalty,
no_repeat_ngram_size, bad_words_ids, sequence_bias, min_length, min_new_tokens,
suppress_tokens, begin_suppress_tokens, forced_bos_token_id, forced_eos_token_id,
exponential_decay_length_penalty, remove_invalid_values.

Not applied, said at load time by :func:`ignored_settings`: the checkpoint's sampling
defaults (each call's own settings rule), beam search, classifier-free guidance (a second
model pass per node), watermarking, stop strings, and sampling filters specexec lacks.
"""

from __future__ import annotations

import copy

import torch
from transformers.generation import logits_process as lp

TREE_SAFE = (
    lp.RepetitionPenaltyLogitsProcessor, lp.NoRepeatNGramLogitsProcessor, lp.SequenceBiasLogitsProcessor,
    lp.MinLengthLogitsProcessor, lp.MinNewTokensLengthLogitsProcessor, lp.SuppressTokensLogitsProcessor,
    lp.SuppressTokensAtBeginLogitsProcessor, lp.ForcedBOSTokenLogitsProcessor, lp.ForcedEOSTokenLogitsProcessor,
    lp.ExponentialDecayLengthPenalty, lp.InfNanRemoveLogitsProcessor,
)  # NoBadWordsLogitsProcessor is a SequenceBiasLogitsProcessor

# generation_config fields that make generate build a logit processor -> the value that means "off"
PROCESSOR_FIELDS = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None,
    "min_length": 0, "min_new_tokens": 0, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "remove_invalid_values": False,
}


def _asks(config, name: str, off) -> bool:
    value = getattr(config, name, None)
    return value is not None and value != off and value != [] and value is not False


# generation_config field -> (value that means "off", why specexec does not apply it)
IGNORED = {
    "do_sample": (False, "sampling follows each call's temperature (default 0: greedy), not the checkpoint's"),
    "temperature": (1.0, "sampling follows each call's temperature, not the checkpoint's"),
    "top_p": (1.0, "top-p follows each call's setting, not the checkpoint's"),
    "top_k": (50, "top-k follows each call's setting, not the checkpoint's"),
    "min_p": (None, "min-p filtering is not supported"),
    "typical_p": (1.0, "typical-p filtering is not supported"),
    "epsilon_cutoff": (0.0, "epsilon sampling is not supported"),
    "eta_cutoff": (0.0, "eta sampling is not supported"),
    "top_h": (None, "top-h filtering is not supported"),
    "num_beams": (1, "beam search is not speculative decoding; decoding is greedy or sampled"),
    "guidance_scale": (None, "classifier-free guidance needs a second model pass per node"),
    "watermarking_config": (None, "watermarking is not supported"),
    "stop_strings": (None, "stop strings are not supported; generation stops at EOS or the token limit"),
}


def ignored_settings(generation_config) -> dict[str, str]:
    """{field: reason} for each setting of ``generation_config`` that changes generate's output but not ours."""
    out = {}
    if generation_config is None:
        return out
    for name, (off, reason) in IGNORED.items():
        value = getattr(generation_config, name, off)
        if value is None or value == off or (name == "guidance_scale" and value == 1):
            continue
        if name in ("temperature", "top_p", "top_k") and not getattr(generation_config, "do_sample", False):
            continue  # not used by generate either unless sampling
        out[name] = f"{name}={value!r}: {reason}"
    return out


def build_processors(model, prompt_len: int, max_new_tokens: int, eos_ids: set[int]):
    """transformers' processors for this call (None when the checkpoint asks for none)."""
    config = getattr(model, "generation_config", None)
    if config is None or not any(_asks(config, name, off) for name, off in PROCESSOR_FIELDS.items()):
        return None  # the common case, decided without building anything
    gc = copy.deepcopy(config)
    gc.do_sample = False  # warpers are ours (each call's sampling settings)
    gc.guidance_scale = None
    gc.watermarking_config = None
    gc.eos_token_id = sorted(eos_ids) or None
    gc.max_new_tokens = None
    gc.max_length = prompt_len + max_new_tokens
    device = next(model.parameters()).device
    model._prepare_special_tokens(gc, True, device=device)
    processors = model._get_logits_processor(gc, input_ids_seq_length=prompt_len, device=device)
    kept = lp.LogitsProcessorList(p for p in processors if isinstance(p, TREE_SAFE))
    return kept or None


def apply_on_tree(processors, logits: torch.Tensor, tree, seq: list[int]) -> torch.Tensor:
    """Processed float32 scores (n, V) at the tree's nodes; node i's history is ``seq`` + its path."""
    n = tree.size
    scores = logits[:n].float()
    out = torch.empty_like(scores)
    prefix = torch.tensor(seq, device=scores.device)
    depth = tree.depth[:n]
    for d in range(int(depth.max()) + 1):
        nodes = torch.nonzero(depth == d).flatten()
        if d == 0:
            history = prefix[None].expand(nodes.numel(), -1)
        else:
            # ancestors of a depth-d node, root excluded: d columns, in path order (parents before children)
            cols = torch.nonzero(tree.ancestors[nodes][:, 1:n])[:, 1].view(nodes.numel(), d) + 1
            history = torch.cat([prefix[None].expand(nodes.numel(), -1), tree.tokens[cols]], dim=1)
        out[nodes] = processors(history, scores[nodes].clone())
    return out
