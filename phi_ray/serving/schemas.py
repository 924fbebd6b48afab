"""Request and response bodies of the HTTP API (OpenAI's shapes), as pydantic models.

Types are strict (``"3"`` is not an integer) so a client bug surfaces as a 400 instead of
a silently coerced request; unknown fields are ignored, as OpenAI-compatible servers do,
so clients that send extra options still work. Value limits that depend on the served
model (context length, ``max_tokens`` ceiling) are checked in the ingress, not here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(strict=True, extra="ignore")


class CompletionRequest(BaseModel):
    """``POST /v1/completions``."""

    model_config = _STRICT

    model: str
    prompt: str | list[str] = Field(description="one prompt, or a list of prompts")
    max_tokens: int = Field(16, ge=1, description="completion tokens per choice")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="choices per prompt")
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    echo: bool = False
    logprobs: int | None = Field(None, description="not supported; must be null")
    user: str | None = None


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: plain, the messages' contents joined by newlines."""

    model_config = _STRICT

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    user: str | None = None


class QualityRequest(BaseModel):
    """``POST /v1/quality``: code to score with the quality classifier."""

    model_config = _STRICT

    code: str | list[str] = Field(description="one source file, or a list of them")


# --------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "phi-ray"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class QualityScore(BaseModel):
    index: int
    score: float = Field(description="probability of high educational value")
    kept: bool = Field(description="score >= the classifier's threshold")


class QualityResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[QualityScore]
    threshold: float


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    model: str
    classifier: str
    detail: str | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
