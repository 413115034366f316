"""OpenAI-compatible request validation and response bodies.

Requests are checked field by field; the first problem becomes a 400 with an OpenAI-style error
body naming the field (``param``) and the bad value. Fields the server cannot honour (``logprobs``,
``echo``, ``best_of`` > ``n``, tools, penalties) are refused rather than silently ignored; fields
that change nothing (``user``, ``stream_options`` other than ``include_usage``) are accepted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["completion", "chat"]

MAX_N = 16
MAX_STOP = 4
DEFAULT_MAX_TOKENS = 16
CHAT_ROLES = ("system", "user", "assistant", "developer", "tool")


class RequestError(Exception):
    """An HTTP-level error with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_unavailable",
}


def bad_request(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param, code="invalid_value" if param else None)


@dataclass
class ParsedRequest:
    """One validated completion or chat request; ``prompts`` has one entry per prompt."""

    kind: Kind
    model: str
    prompts: list[Any]  # completion: list[str]; chat: [list[{"role","content"}]]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON ({exc}); send a JSON object.") from None
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_field(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad_request(f"'{name}' must be an integer {bound}, got {value!r}.", name)
    return value


def _float_field(
    body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or value > hi or value < lo or (lo_open and value == lo):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise bad_request(f"'{name}' must be a number {bound} and <= {hi}, got {value!r}.", name)
    return float(value)


def _stop_field(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise bad_request(
            f"'stop' must be a non-empty string or a list of up to {MAX_STOP} non-empty strings, got {stop!r}.",
            "stop",
        )
    return tuple(stop)


def _refuse_unsupported(body: dict[str, Any], kind: Kind) -> None:
    if body.get("logprobs") not in (None, False, 0):
        raise bad_request("'logprobs' is not supported by this server; remove it.", "logprobs")
    if kind == "chat" and body.get("top_logprobs") not in (None, 0):
        raise bad_request("'top_logprobs' is not supported by this server; remove it.", "top_logprobs")
    if body.get("echo") not in (None, False):
        raise bad_request("'echo' is not supported by this server; remove it.", "echo")
    if body.get("suffix") not in (None, ""):
        raise bad_request("'suffix' is not supported by this server; remove it.", "suffix")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value not in (None, 0, 0.0):
            raise bad_request(f"'{name}' is not supported by this server; send 0 or leave it out.", name)
    if body.get("logit_bias"):
        raise bad_request("'logit_bias' is not supported by this server; remove it.", "logit_bias")
    if body.get("tools") or body.get("functions"):
        raise bad_request("Tool calls are not supported by this server; remove 'tools'.", "tools")


def _completion_prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required: a string or a list of strings.", "prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        raise bad_request("Token-id prompts are not supported; send the prompt as text.", "prompt")
    raise bad_request(
        f"'prompt' must be a string or a non-empty list of strings, got {prompt!r:.80}.", "prompt"
    )


def _message_content(content: Any, index: int) -> str:
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise bad_request(
                    f"'{param}' may only hold text parts ({{'type': 'text', 'text': ...}}).", param
                )
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"'{param}' must be a string or a list of text parts, got {content!r:.80}.", param)


def _chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required: a non-empty list of {role, content} objects.", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(
                f"'messages[{i}]' must be an object with 'role' and 'content'.", f"messages[{i}]"
            )
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(
                f"'messages[{i}].role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}.",
                f"messages[{i}].role",
            )
        out.append({"role": role, "content": _message_content(message.get("content"), i)})
    return out


def parse_request(body: dict[str, Any], kind: Kind) -> ParsedRequest:
    """Validate an OpenAI completions (``kind='completion'``) or chat completions body."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request(
            "'model' is required: a deployment, adapter name, adapter hash or base model.", "model"
        )
    _refuse_unsupported(body, kind)
    prompts: list[Any] = _completion_prompts(body) if kind == "completion" else [_chat_messages(body)]
    max_name = "max_completion_tokens" if kind == "chat" and body.get("max_tokens") is None else "max_tokens"
    max_tokens = _int_field(body, max_name, DEFAULT_MAX_TOKENS, 1, None)
    n = _int_field(body, "n", 1, 1, MAX_N)
    assert n is not None and max_tokens is not None
    best_of = body.get("best_of")
    if kind == "completion" and best_of is not None and best_of != n:
        raise bad_request(f"'best_of' other than 'n' is not supported, got {best_of!r}.", "best_of")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request(f"'seed' must be an integer, got {seed!r}.", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request(f"'stream' must be true or false, got {stream!r}.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options")
    user = body.get("user")
    return ParsedRequest(
        kind=kind,
        model=model.strip(),
        prompts=prompts,
        max_tokens=max_tokens,
        temperature=_float_field(body, "temperature", 1.0, 0.0, 2.0, lo_open=False),
        top_p=_float_field(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        seed=seed,
        n=n,
        stop=_stop_field(body),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        user=user if isinstance(user, str) else None,
    )


# ---------------------------------------------------------------- responses


@dataclass
class Choice:
    """The finished text of one choice."""

    index: int
    text: str
    finish_reason: str | None
    input_tokens: int = 0
    output_tokens: int = 0


def usage(choices: list[Choice], prompt_count: int, n: int) -> dict[str, int]:
    # each prompt's input is counted once, however many choices it has (as OpenAI does)
    prompt_tokens = sum(c.input_tokens for c in choices[::n]) if n else 0
    completion_tokens = sum(c.output_tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    req: ParsedRequest, response_id: str, model: str, choices: list[Choice], created: int | None = None
) -> dict[str, Any]:
    created = int(time.time()) if created is None else created
    if req.kind == "chat":
        items: list[dict[str, Any]] = [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ]
        obj = "chat.completion"
    else:
        items = [
            {"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
            for c in choices
        ]
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": items,
        "usage": usage(choices, len(req.prompts), req.n),
    }


def chunk_body(
    req: ParsedRequest,
    response_id: str,
    model: str,
    created: int,
    index: int,
    text: str | None,
    finish_reason: str | None,
    *,
    first: bool = False,
) -> dict[str, Any]:
    """One streamed chunk for one choice (chat: ``delta``; completions: ``text``)."""
    if req.kind == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": model, "choices": [choice]}


def usage_chunk(
    req: ParsedRequest, response_id: str, model: str, created: int, choices: list[Choice]
) -> dict[str, Any]:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(choices, len(req.prompts), req.n),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` followed by a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")
