"""Request bodies of ``/v1/chat/completions`` and ``/v1/completions``.

OpenAI's fields that apply, plus ours (``top_k``, ``method`` and the tree settings) in the same
body, as vLLM takes its extras. Types are strict (``"5"`` is not a number) and unknown fields
are refused, as OpenAI refuses them. OpenAI fields that this server cannot honour are accepted
only at their neutral value (``n`` = 1, ``logprobs`` off, penalties 0, ...) and refused
otherwise with a message saying so.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import METHODS, SEED_RANGE

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 16
# ceilings on the tree settings a request may ask for (memory of the tree grows with their product)
TREE_LIMITS = {"max_budget": 4096, "max_beam_len": 256, "max_n_beams": 1024, "max_branch_width": 1024}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ContentPart(_Strict):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are supported (type 'text' with 'text'), got type {self.type!r}")
        return self


class Message(_Strict):
    role: str
    content: str | list[ContentPart]
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        return role

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class _Sampling(_Strict):
    """Fields common to both endpoints; ``None`` means the server's own setting."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # ours
    top_k: int | None = Field(default=None, ge=0)
    method: Literal[METHODS] | None = None  # type: ignore[valid-type]
    max_budget: Annotated[int, Field(ge=1, le=TREE_LIMITS["max_budget"])] | Literal["auto"] | None = None
    max_beam_len: int | None = Field(default=None, ge=1, le=TREE_LIMITS["max_beam_len"])
    max_n_beams: int | None = Field(default=None, ge=1, le=TREE_LIMITS["max_n_beams"])
    max_branch_width: int | None = Field(default=None, ge=1, le=TREE_LIMITS["max_branch_width"])
    min_log_prob: float | None = Field(default=None, le=0)
    decay: float | None = Field(default=None, gt=0, le=1)
    draft_temperature: float | None = Field(default=None, ge=0)

    @field_validator("logprobs", check_fields=False)  # a bool in chat requests, an int in completions
    @classmethod
    def _no_logprobs(cls, value):
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError(f"only n=1 is supported (one engine decodes one sequence at a time), got {n}")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stop

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value):
        if value not in (None, 0, 0.0):
            raise ValueError("penalties are not supported (they would change the target's distribution); use 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value):
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages):
        if not messages:
            raise ValueError("messages must hold at least one message")
        return messages

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    echo: bool | None = False
    suffix: None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError("one prompt per request (a list of several prompts is not supported)")
            prompt = prompt[0]
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError("the prompt is empty")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt is empty")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value):
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value):
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    def token_limit(self) -> int | None:
        return self.max_tokens
