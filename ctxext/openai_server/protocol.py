"""The OpenAI API's request bodies as ``ctxext serve`` reads them (pydantic models), the sampling settings they
carry, and :class:`ApiError`, the error a request is answered with instead of a completion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

MAX_STOP = 4  # stop sequences per request, as the OpenAI API allows

# request fields of the OpenAI API that this server does not implement, with the values that leave them unused
# (a client that sends one of those, or null, is served; any other value is refused rather than ignored)
UNSUPPORTED = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "suffix": ("",),
    "tools": ([],),
    "response_format": ({"type": "text"},),
}


class ApiError(Exception):
    """What the API answers instead of a completion: the HTTP status, a one-line message and its type, as the
    OpenAI API's error body carries them (400 and 404: the request's fault; 503: busy; 500: a failed run)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class Sampling:
    """How one request generates: temperature 0 is greedy; ``max_tokens`` None runs up to the model's length."""

    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The fields both endpoints share; null stands for the API's default, as in the OpenAI API."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data):
        if isinstance(data, dict):
            for key, unused in UNSUPPORTED.items():
                if data.get(key) is not None and data[key] not in unused:
                    raise ValueError(f"{key}={data[key]!r} is not supported by ctxext serve")
        return data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP or not all(stops):
            raise ValueError(f"stop takes up to {MAX_STOP} non-empty strings")
        return stops

    def sampling(self, max_tokens: int | None) -> Sampling:
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(self.stop or ()),
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``: one prompt string (the tokenizer adds its special tokens, BOS for most models)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # the OpenAI API's default for completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError(f"one prompt per request, got {len(prompt)}")
            return prompt[0]
        return prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: str
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": self.role, "content": content}


class ChatRequest(GenerationRequest):
    """``POST /v1/chat/completions``: the messages go through the tokenizer's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
