"""Request and response bodies of the HTTP API (OpenAI's and vLLM's shapes), as pydantic models.

Types are strict (``"3"`` is not an integer) so a client bug surfaces as a 400 instead of
a silently coerced request. Unknown fields are a 400 that names them (``extra="forbid"``):
a client that asks for something this server does not do learns it, instead of getting an
answer that silently ignored it. Parameters that OpenAI or vLLM define but this server does
not implement are accepted at their neutral value only (:data:`NEUTRAL`). Value limits
that depend on the served model (context length, ``max_tokens`` ceiling) are checked in the
ingress, not here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(strict=True, extra="forbid")

# Parameters of OpenAI's / vLLM's completion APIs that this server does not implement,
# with the values that mean "off": anything else is a 400 naming the parameter.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "top_k": (None, 0, -1),
    "min_p": (None, 0, 0.0),
    "min_tokens": (None, 0),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "top_logprobs": (None, 0),
}
_CHAT_NEUTRAL = {**NEUTRAL, "logprobs": (None, False)}  # chat's `logprobs` is a bool
_NEUTRAL_FIELDS = {
    k: Field(None, description="not implemented: only its neutral value") for k in NEUTRAL
}

TokenIds = list[int]
Prompt = str | list[str] | TokenIds | list[TokenIds]


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False


class _Request(BaseModel):
    model_config = _STRICT

    def unsupported(self) -> list[str]:
        """Names of the not-implemented parameters set to something other than neutral."""
        fields = type(self).model_fields
        neutral = _CHAT_NEUTRAL if isinstance(self, ChatCompletionRequest) else NEUTRAL
        return [
            k
            for k, ok in neutral.items()
            if k in fields
            and getattr(self, k) not in ok
            and not (k == "best_of" and getattr(self, k) == getattr(self, "n", None))
        ]


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    model: str
    prompt: Prompt = Field(
        description="a string, a list of strings, token ids, or a list of token-id lists"
    )
    max_tokens: int = Field(16, ge=0, description="completion tokens per choice (0: echo only)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 (or < 1e-5): greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="choices per prompt")
    stop: str | list[str] | None = Field(None, description="stop sequences")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(
        None, ge=0, le=20, description="top-k log-probabilities per token (0: the token's own)"
    )
    user: str | None = None
    best_of: int | None = _NEUTRAL_FIELDS["best_of"]
    frequency_penalty: float | None = _NEUTRAL_FIELDS["frequency_penalty"]
    presence_penalty: float | None = _NEUTRAL_FIELDS["presence_penalty"]
    repetition_penalty: float | None = _NEUTRAL_FIELDS["repetition_penalty"]
    logit_bias: dict[str, float] | None = _NEUTRAL_FIELDS["logit_bias"]
    suffix: str | None = _NEUTRAL_FIELDS["suffix"]
    top_k: int | None = _NEUTRAL_FIELDS["top_k"]
    min_p: float | None = _NEUTRAL_FIELDS["min_p"]
    min_tokens: int | None = _NEUTRAL_FIELDS["min_tokens"]


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``: plain, the messages' contents joined by newlines."""

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
    stream_options: StreamOptions | None = None
    user: str | None = None
    logprobs: bool | None = Field(None, description="not implemented for chat: false only")
    top_logprobs: int | None = _NEUTRAL_FIELDS["top_logprobs"]
    frequency_penalty: float | None = _NEUTRAL_FIELDS["frequency_penalty"]
    presence_penalty: float | None = _NEUTRAL_FIELDS["presence_penalty"]
    logit_bias: dict[str, float] | None = _NEUTRAL_FIELDS["logit_bias"]
    response_format: dict[str, str] | None = _NEUTRAL_FIELDS["response_format"]
    tools: list[dict[str, Any]] | None = _NEUTRAL_FIELDS["tools"]
    tool_choice: str | None = _NEUTRAL_FIELDS["tool_choice"]


class QualityRequest(_Request):
    """``POST /v1/quality``: code to score with the quality classifier."""

    code: str | list[str] = Field(description="one source file, or a list of them")


class TokenizeRequest(_Request):
    """``POST /tokenize`` (vLLM's): text to token ids with the served model's tokenizer."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    """``POST /detokenize`` (vLLM's): token ids to text."""

    model: str | None = None
    tokens: TokenIds


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path (``prompt[1]``, ``messages[0].content``) of the first string in ``value``
    that holds a lone UTF-16 surrogate (JSON's ``"\\ud800"``), else None.

    Such text is not Unicode: the tokenizer cannot encode it and no response can echo it.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, BaseModel):
        items: Any = (
            (f"{path}.{k}" if path else k, getattr(value, k)) for k in type(value).model_fields
        )
    elif isinstance(value, dict):
        items = ((f"{path}.{k}", v) for k, v in value.items())
        for k in value:
            if isinstance(k, str) and lone_surrogate(k):
                return path
    elif isinstance(value, list):
        if value and isinstance(value[0], int):
            return None  # token ids: no text to look at
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for p, v in items:
        if (hit := lone_surrogate(v, p)) is not None:
            return hit
    return None


# --------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completion logprobs, as lm-eval and vLLM read and write them."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
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


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """``GET /tokenizer_info``: what lm-eval's remote tokenizer reads (vLLM's endpoint)."""

    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    model_max_length: int
    chat_template: str | None = None

    @classmethod
    def of(cls, tok: Any, context: int) -> TokenizerInfo:
        """What ``tok`` (a transformers tokenizer) reports, with the model's context."""
        return cls(
            tokenizer_class=type(tok).__name__,
            eos_token=tok.eos_token,
            bos_token=tok.bos_token,
            pad_token=tok.pad_token,
            model_max_length=context,
            chat_template=getattr(tok, "chat_template", None),
        )


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
