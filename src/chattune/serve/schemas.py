"""The OpenAI chat completions wire format (the subset chattune serves), the feedback API, and the request limits.

Requests are validated here, at the edge: unknown roles, empty or oversized conversations, `max_tokens` above the
cap and wrong types are refused with a 400 naming the field; the rest of the server trusts what it gets.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from chattune.generate.logprobs import MAX_TOP_LOGPROBS
from chattune.generate.sampling import Sampling

MAX_MESSAGES = 100  # turns per request; a longer chat no longer fits a small model's context anyway
MAX_MESSAGE_CHARS = 16_000  # characters per message (~4k tokens of English)
MAX_TOTAL_CHARS = 32_000  # characters per conversation (~8k tokens: SmolLM2's whole context)
MAX_BODY_BYTES = 256 * 1024  # request body; room for MAX_TOTAL_CHARS even as escaped JSON, refused with 413 above
MAX_TOKENS_CAP = 1024  # longest reply a request may ask for (~1 min of a 135M model on 2 CPU cores)
MAX_SEED = 2**63 - 1  # seeds are stored in SQLite's signed 64-bit INTEGER
MAX_CHOICES = 4  # replies per request (`n`); they decode as rows of one batch, so 4 cost about what 1 does
MAX_STOP_STRINGS = 4  # as OpenAI
MAX_STOP_CHARS = 64  # per stop string
# OpenAI fields chattune does not implement: a request using them gets a 400 naming the field, never a reply that
# silently ignored what it asked for
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "logit_bias": "logit_bias", "audio": "audio output",
    "modalities": "audio output", "prediction": "predicted outputs",
    # both backends pick tokens in Python from the logits (one sampler, seeded per request), so llama.cpp's grammar
    # sampler is not in the loop; a JSON constraint would mean masking the vocabulary against a parser every step
    "response_format": "structured output (json_object, json_schema): replies are sampled without a grammar",
}
# strict: JSON types are taken as they are ("0.5" is not a number, true is not an integer), as OpenAI validates
STRICT = ConfigDict(strict=True)


def _no_surrogates(text: str, field: str) -> str:
    """A lone surrogate (JSON "\\ud800") cannot be stored as UTF-8; refuse it here rather than after generating."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} holds a lone UTF-16 surrogate; send valid Unicode text") from None
    return text


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False  # send a last chunk with token counts (and no choices) before [DONE]


class ChatRequest(BaseModel):
    model_config = STRICT

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = None  # must name the served model when given (GET /v1/models)
    # absent: the server's decoding defaults (GET /api/defaults), as `chattune chat` would decode
    temperature: float | None = Field(None, ge=0, le=2)  # 0 is greedy
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)  # the newer name of max_tokens
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)  # a string or a list
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=MAX_CHOICES)  # replies to the conversation, decoded together
    logprobs: bool = False  # each reply token's log-probability under the model
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # and its likeliest alternatives
    stream: bool = False
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)  # the web page sends {"conversation_id": ...}

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, body: object) -> object:
        if isinstance(body, dict):
            for field, feature in UNSUPPORTED.items():
                if body.get(field) not in (None, False) and body.get(field) != {"type": "text"}:
                    raise ValueError(f"{field}: {feature} is not supported by this server; leave the field out")
        return body

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, stop: object) -> object:
        return [stop] if isinstance(stop, str) else [] if stop is None else stop

    @field_validator("metadata")
    @classmethod
    def _short_metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata and any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
            raise ValueError("metadata keys are at most 64 characters and values at most 512")
        for key, value in (metadata or {}).items():
            _no_surrogates(key, "metadata"), _no_surrogates(value, f"metadata.{key}")
        return metadata

    @model_validator(mode="after")
    def _conversation_fits(self) -> ChatRequest:
        for index, message in enumerate(self.messages):
            _no_surrogates(message.content, f"messages.{index}.content")
        for text in [*self.stop, self.model or ""]:
            _no_surrogates(text, "stop" if text in self.stop else "model")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        total = sum(len(m.content) for m in self.messages)
        if total > MAX_TOTAL_CHARS:
            raise ValueError(f"the messages hold {total} characters; at most {MAX_TOTAL_CHARS} are accepted")
        return self

    def sampling(self, defaults: Sampling) -> Sampling:
        """The request's decoding settings: what it gives, the server's defaults for the rest."""
        given = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                 "max_new_tokens": self.max_completion_tokens or self.max_tokens}
        return replace(defaults, **{key: value for key, value in given.items() if value is not None})


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's UTF-8 bytes (a token may hold part of a character)


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _fields_present(self) -> dict:
        # OpenAI sends only what a chunk carries: {"role", "content": ""} first, then {"content"}, and {} last
        return {key: value for key, value in (("role", self.role), ("content", self.content)) if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class DecodingDefaults(BaseModel):
    """GET /api/defaults: how a request that leaves these fields out is decoded."""

    temperature: float
    top_p: float
    max_tokens: int
    max_tokens_cap: int  # the most `max_tokens` a request may ask for


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chattune"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str  # invalid_request_error, authentication_error, not_found_error, server_error, ...
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class FeedbackRequest(BaseModel):
    """Sent by the web page; only the fields present are changed."""

    model_config = STRICT

    reply_id: str = Field(max_length=64)  # the completion id (chatcmpl-...)
    rating: Literal[-1, 0, 1] | None = None  # thumbs down, clear, thumbs up
    edited: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)  # the reply the user wanted; null clears it


class FeedbackResponse(BaseModel):
    reply_id: str
    rating: Literal[-1, 1] | None
    edited: str | None
