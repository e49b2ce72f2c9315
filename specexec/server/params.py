"""From a validated request to what the engine runs: prompt token ids, a GenerationConfig, stop strings.

Fields a request leaves out take the server's own settings (the decoding options it was
started with); the checks that need the model (chat template, context length, the server's
limits, a method that needs a draft) are made here, before the request is queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import GenerationConfig
from ..errors import ConfigError, PromptError
from .errors import APIError
from .schemas import ChatCompletionRequest, CompletionRequest

TREE_FIELDS = ("method", "max_budget", "max_beam_len", "max_n_beams", "max_branch_width", "min_log_prob", "decay",
               "draft_temperature", "temperature", "top_p", "top_k", "seed")


@dataclass
class Limits:
    max_prompt_tokens: int  # longest prompt accepted
    max_tokens: int  # most new tokens a request may ask for


@dataclass
class Prepared:
    prompt_ids: list[int]
    config: GenerationConfig
    stops: list[str]


def chat_prompt_ids(tokenizer, request: ChatCompletionRequest) -> list[int]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages]
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    except Exception as err:  # noqa: BLE001 - a template refusing the conversation (e.g. roles out of order)
        raise APIError(400, f"the chat template refused these messages: {err}", param="messages") from None
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def completion_prompt_ids(tokenizer, request: CompletionRequest) -> list[int]:
    if isinstance(request.prompt, str):
        if tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send the prompt as token ids", param="prompt")
        return list(tokenizer(request.prompt, add_special_tokens=True)["input_ids"])
    return list(request.prompt)


def prepare(request, *, chat: bool, engine, tokenizer, base: GenerationConfig, limits: Limits) -> Prepared:
    param = "messages" if chat else "prompt"
    ids = chat_prompt_ids(tokenizer, request) if chat else completion_prompt_ids(tokenizer, request)
    try:
        ids = engine.encode(ids)  # token range and the target's context
    except PromptError as err:
        raise APIError(400, str(err), param=param, code="context_length_exceeded" if "context" in str(err) else None)
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this server takes at most {limits.max_prompt_tokens}",
                       param=param, code="context_length_exceeded")
    room = engine.max_context - len(ids)
    asked = request.token_limit()
    asked_param = "max_completion_tokens" if chat and request.max_completion_tokens is not None else "max_tokens"
    if asked is not None and asked > limits.max_tokens:
        raise APIError(400, f"{asked_param} is {asked}; this server allows at most {limits.max_tokens}",
                       param=asked_param, code="invalid_value")
    if asked is not None and asked > room:
        raise APIError(400, f"this model's maximum context length is {engine.max_context} tokens; the prompt has "
                            f"{len(ids)} and {asked} more were requested", param=asked_param,
                       code="context_length_exceeded")
    overrides = {k: getattr(request, k) for k in TREE_FIELDS if getattr(request, k) is not None}
    overrides["max_new_tokens"] = asked if asked is not None else max(1, min(base.max_new_tokens, room))
    try:
        config = base.with_(**overrides)
    except ConfigError as err:
        raise APIError(400, str(err), param=next((k for k in overrides if k in str(err)), None)) from None
    if config.method != "autoregressive" and engine.draft is None:
        raise APIError(400, f"method {config.method!r} needs a draft model; this server runs without one",
                       param="method")
    return Prepared(ids, config, request.stops())
