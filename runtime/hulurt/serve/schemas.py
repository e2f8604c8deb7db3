"""The OpenAI chat-completions wire format, read and written by hand: a request body -> ChatRequest (every
field checked, errors name the field), and the response / chunk / error objects the server sends.

Only what this server can honour is accepted: n=1, no tools, no logprobs. Unknown extra fields are ignored
(clients send vendor extensions), known-but-unsupported ones get a 400 that says so.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hulurt import checks


class APIError(Exception):
    """An error answered as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Part:
    """One content part of a message: text, or an upload (the data URL still encoded)."""

    kind: str  # "text" | "image_url" | "file"
    where: str  # the JSON path of the part, e.g. "messages[1].content[0]", for error messages
    text: str = ""
    data_url: str = ""
    filename: str | None = None  # file parts: the client's file name (names the file in errors)


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if p.kind == "text")

    @property
    def uploads(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind != "text")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None  # extension (vLLM's name); 1.0 = off
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        """temperature absent or 0 -> greedy: a clinical service answers the same question the same way."""
        return self.temperature is None or self.temperature == 0


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "audio": "audio output", "prediction": "predicted outputs",
}


def _num(body: dict[str, Any], name: str, lo: float, hi: float, *, integer: bool = False,
         lo_open: bool = False) -> Any:
    v = body.get(name)
    if v is None:
        return None
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or (not integer and not math.isfinite(v)):
        raise bad(f"'{name}' must be {'an integer' if integer else 'a number'}; got {v!r}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise bad(f"'{name}' must be in {rng}; got {v}", name)
    return v


def _parts(content: Any, where: str, role: str) -> tuple[Part, ...]:
    if isinstance(content, str):
        reason = checks.text(content)
        if reason is not None:
            raise bad(f"'{where}' {reason}", where)
        return (Part("text", where, text=content),)
    if content is None and role == "assistant":
        return ()
    if not isinstance(content, list):
        raise bad(f"'{where}' must be a string or a list of content parts; got {type(content).__name__}", where)
    out: list[Part] = []
    for k, item in enumerate(content):
        w = f"{where}[{k}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise bad(f"'{w}' must be an object with a 'type'", w)
        kind = item["type"]
        if kind == "text":
            reason = checks.text(item.get("text"))
            if reason is not None:
                raise bad(f"'{w}.text' {reason}", f"{w}.text")
            out.append(Part("text", w, text=item["text"]))
        elif kind == "image_url":
            iu = item.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str):
                raise bad(f"'{w}.image_url.url' must be a string (a data: URL)", f"{w}.image_url.url")
            out.append(Part("image_url", w, data_url=url))
        elif kind == "file":
            f = item.get("file")
            if not isinstance(f, dict):
                raise bad(f"'{w}.file' must be an object with 'file_data' and 'filename'", f"{w}.file")
            if f.get("file_id") is not None and f.get("file_data") is None:
                raise bad(f"'{w}.file.file_id': this server has no Files API; send the file inline as "
                          "'file_data' (a base64 data: URL) with its 'filename'", f"{w}.file.file_id")
            data, name = f.get("file_data"), f.get("filename")
            if not isinstance(data, str):
                raise bad(f"'{w}.file.file_data' must be a base64 data: URL string", f"{w}.file.file_data")
            if not isinstance(name, str) or not name.strip():
                raise bad(f"'{w}.file.filename' is required (its extension says what the file is: .nii/.nii.gz, "
                          ".zip of a DICOM series, .dcm, .png/.jpg, .mp4...)", f"{w}.file.filename")
            out.append(Part("file", w, data_url=data, filename=name))
        else:
            raise bad(f"'{w}.type' {kind!r} is not supported; expected 'text', 'image_url' or 'file'", f"{w}.type")
        if role != "user" and kind != "text":
            raise bad(f"'{w}': only user messages may carry images or files; this is a {role} message", w)
    return tuple(out)


def parse_chat_request(body: Any, default_model: str) -> ChatRequest:
    """A decoded JSON body -> ChatRequest, or APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for name, what in _UNSUPPORTED.items():
        if body.get(name):
            raise bad(f"'{name}': {what} is not supported by this server", name)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("'logprobs' is not supported by this server", "logprobs")
    n = _num(body, "n", 1, 1, integer=True)
    del n  # only n=1 passes
    for name in ("frequency_penalty", "presence_penalty"):
        v = _num(body, name, -2.0, 2.0)
        if v not in (None, 0, 0.0):
            raise bad(f"'{name}' is not supported (only 0); use 'repetition_penalty' (> 0, 1 = off)", name)
    model = body.get("model", default_model)
    if not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list", "messages")
    messages: list[Message] = []
    for k, m in enumerate(msgs):
        w = f"messages[{k}]"
        if not isinstance(m, dict):
            raise bad(f"'{w}' must be an object with 'role' and 'content'", w)
        role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise bad(f"'{w}.role' {m.get('role')!r} is not supported; expected system, developer, user or "
                      "assistant", f"{w}.role")
        messages.append(Message(role, _parts(m.get("content"), f"{w}.content", role)))
    if messages[-1].role != "user":
        raise bad(f"the last message must have role 'user' (the question); got {messages[-1].role!r}",
                  f"messages[{len(messages) - 1}].role")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    mt = _num(body, "max_completion_tokens", 1, 10**9, integer=True)
    if mt is None:
        mt = _num(body, "max_tokens", 1, 10**9, integer=True)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(stop)
    else:
        raise bad("'stop' must be a string or a list of at most 4 strings", "stop")
    if any(not s for s in stops):
        raise bad("'stop' strings must not be empty", "stop")
    seed = _num(body, "seed", -(2**63), 2**64 - 1, integer=True)
    user = body.get("user")
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        stream=stream,
        include_usage=bool(so.get("include_usage", False)),
        max_tokens=mt,
        temperature=_num(body, "temperature", 0.0, 2.0),
        top_p=_num(body, "top_p", 0.0, 1.0, lo_open=True),
        seed=None if seed is None else int(seed) % 2**32,
        stop=stops,
        repetition_penalty=_num(body, "repetition_penalty", 0.0, 10.0, lo_open=True),
        user=user if isinstance(user, str) else None,
    )


# ------------------------------------------------------------------------------------------ responses


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, created: int, text: str, finish: str, use: dict[str, Any],
               fingerprint: str) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish}],
        "usage": use,
    }


def chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish: str | None, fingerprint: str,
          use: dict[str, Any] | None = None, no_choices: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "system_fingerprint": fingerprint}
    c["choices"] = [] if no_choices else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    if use is not None:
        c["usage"] = use
    return c


def now() -> int:
    return int(time.time())
