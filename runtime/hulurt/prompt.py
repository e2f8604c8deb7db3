"""Chat prompts: the built-in Hulu-Med template (or a checkpoint's chat_template.json) rendered with Jinja2, and
expansion of each `<image>` placeholder into the right number of image token ids (docs/model.md §7, §5.2).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.errors import UnsupportedInputError

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
GENERATION_PROMPT = "<|im_start|>assistant\n"

# The structure of docs/model.md §7.2 (original processor.py DEFAULT_CHAT_TEMPLATE + the HF version's
# add_system_prompt branch), written by us. Every output goes through `{{- ... -}}` with explicit "\n", so the
# result is the same with or without trim_blocks/lstrip_blocks. Image items take `timestamp` (HF) or `time`
# (original); video/3-D items take `num_frames` and optional `timestamps`. The system text of the Hub checkpoints
# is unknown (docs/model.md §12, question 1): it is emitted only when the caller passes `system_prompt`.
BUILTIN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and add_system_prompt is defined and add_system_prompt and message['role'] != 'system'"
    " and system_prompt is defined and system_prompt -%}"
    "{{- '<|im_start|>system\\n' + system_prompt + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{- item['text'] -}}"
    "{%- elif item['type'] == 'image' -%}"
    "{%- set t = item['timestamp'] if item['timestamp'] is defined else item['time'] -%}"
    "{%- if t is defined and t is not none -%}"
    "{{- 'Time ' + (t | round(1) | string) + 's: ' -}}"
    "{%- endif -%}"
    "{{- image_token + '\\n' -}}"
    "{%- elif item['type'] == 'video' or item['type'] == '3d' -%}"
    "{%- for i in range(item['num_frames']) -%}"
    "{%- if item['timestamps'] is defined and item['timestamps'] is not none -%}"
    "{{- 'Time ' + (item['timestamps'][i] | round(1) | string) + 's:' -}}"
    "{%- endif -%}"
    "{{- image_token -}}"
    "{%- if loop.last -%}{{- '\\n' -}}{%- else -%}{{- ',' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def load_chat_template(path: str | os.PathLike[str] | None) -> str:
    """The template string of a checkpoint/bundle: `chat_template.json` (key "chat_template") or a .jinja file.

    `path` may be the directory holding it. None, or a directory without one, gives BUILTIN_CHAT_TEMPLATE
    (never tokenizer_config.json's Qwen template: it knows nothing of images, docs/model.md §7.1).
    """
    if path is None:
        return BUILTIN_CHAT_TEMPLATE
    p = Path(path)
    if p.is_dir():
        for name in ("chat_template.json", "chat_template.jinja"):
            if (p / name).is_file():
                return load_chat_template(p / name)
        log.info("no chat_template.json in %s; using the built-in Hulu-Med template", p)
        return BUILTIN_CHAT_TEMPLATE
    if not p.is_file():
        raise UnsupportedInputError(p, "chat template file not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jinja":
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnsupportedInputError(p, f"not valid JSON ({e})") from e
    tpl = data.get("chat_template") if isinstance(data, dict) else None
    if not isinstance(tpl, str):
        raise UnsupportedInputError(p, "expected a JSON object with a string 'chat_template'")
    return tpl


def render(
    messages: Sequence[Mapping[str, Any]],
    template: str | None = None,
    add_generation_prompt: bool = True,
    add_system_prompt: bool = False,
    system_prompt: str | None = None,
    image_token: str = IMAGE_TOKEN,
) -> str:
    """Render a conversation the way transformers' apply_chat_template does (Jinja2, trim_blocks,
    lstrip_blocks, sandboxed, loopcontrols), with Hulu-Med's variables. The template is untrusted input:
    hulurt.template renders it with time, size and recursion limits."""
    from hulurt.template import render_template

    return render_template(template or BUILTIN_CHAT_TEMPLATE, {
        "messages": list(messages),
        "add_generation_prompt": add_generation_prompt,
        "add_system_prompt": add_system_prompt,
        "system_prompt": system_prompt,
        "image_token": image_token,
    })


def check_template(template: str, source: object = None) -> None:
    """Render a one-question conversation with `template`: a template that fails (or runs away) is refused now,
    naming its file, instead of on the first request."""
    try:
        render_pieces([{"role": "user", "content": [{"type": "text", "text": "Is this template usable?"}]}],
                      template)
    except UnsupportedInputError as e:
        if source is None:
            raise
        raise UnsupportedInputError(source, f"chat template: {e.reason}") from e


def format_time(t: float) -> str:
    """Python's str(round(t, 1)) as the templates print a timestamp (2 -> '2.0', 12.345 -> '12.3')."""
    return str(round(float(t), 1))


def render_builtin(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    add_system_prompt: bool = False,
    system_prompt: str | None = None,
    image_token: str = IMAGE_TOKEN,
) -> str:
    """The built-in template in plain Python (no Jinja2): same bytes as render(..., BUILTIN_CHAT_TEMPLATE)."""
    out: list[str] = []
    for k, msg in enumerate(messages):
        if k == 0 and add_system_prompt and msg["role"] != "system" and system_prompt:
            out.append(f"<|im_start|>system\n{system_prompt}<|im_end|>\n")
        out.append(f"<|im_start|>{msg['role']}\n")
        content = msg["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            for item in content:
                kind = item["type"]
                if kind == "text":
                    out.append(item["text"])
                elif kind == "image":
                    t = item.get("timestamp", item.get("time"))
                    if t is not None:
                        out.append(f"Time {format_time(t)}s: ")
                    out.append(image_token + "\n")
                elif kind in ("video", "3d"):
                    ts = item.get("timestamps")
                    n = int(item["num_frames"])
                    for i in range(n):
                        if ts is not None:
                            out.append(f"Time {format_time(ts[i])}s:")
                        out.append(image_token + ("\n" if i == n - 1 else ","))
        out.append("<|im_end|>\n")
    if add_generation_prompt:
        out.append(GENERATION_PROMPT)
    return "".join(out)


def expand(
    prompt: str,
    tokens_per_placeholder: Sequence[int],
    encode: Callable[[str], Sequence[int]],
    image_token_id: int,
    image_token: str = IMAGE_TOKEN,
) -> NDArray[np.int64]:
    """Token ids of `prompt` with its k-th `<image>` replaced by tokens_per_placeholder[k] image ids.

    The text between placeholders is encoded piece by piece and the image ids are inserted directly, which
    equals encoding the expanded string whenever `<image>` is an added token (docs/model.md §5.2).
    """
    pieces = prompt.split(image_token)
    if len(pieces) - 1 != len(tokens_per_placeholder):
        raise UnsupportedInputError(
            "prompt",
            f"the rendered prompt has {len(pieces) - 1} '{image_token}' placeholders but the visual inputs have "
            f"{len(tokens_per_placeholder)} frames; each frame needs exactly one placeholder",
        )
    ids: list[int] = []
    for k, piece in enumerate(pieces):
        if piece:
            ids.extend(int(i) for i in encode(piece))
        if k < len(tokens_per_placeholder):
            n = int(tokens_per_placeholder[k])
            if n < 0:
                raise ValueError(f"placeholder {k}: negative token count {n}")
            ids.extend([image_token_id] * n)
    return np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------- caller text vs template text


_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered conversation and where its text came from. `pieces` are (text, from_caller) in order and join
    to `text`: the template's own text may hold control tokens (<|im_start|>, <image>), the caller's text
    (questions, earlier turns, the system prompt) is only ever text. `separated` is False when the template
    rewrote the caller's text (trimmed it, say), so the two could not be told apart: one template piece."""

    text: str
    pieces: tuple[tuple[str, bool], ...]
    separated: bool
    caller: tuple[str, ...] = ()  # the caller's strings as passed in


def _marked(messages: Sequence[Mapping[str, Any]], mark: Callable[[str], str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        m = dict(msg)
        content = m.get("content")
        if isinstance(content, str):
            m["content"] = mark(content)
        elif isinstance(content, (list, tuple)):
            m["content"] = [
                {**item, "text": mark(item["text"])}
                if isinstance(item, Mapping) and item.get("type") == "text" and isinstance(item.get("text"), str)
                else item
                for item in content
            ]
        out.append(m)
    return out


def render_pieces(
    messages: Sequence[Mapping[str, Any]],
    template: str | None = None,
    add_generation_prompt: bool = True,
    add_system_prompt: bool = False,
    system_prompt: str | None = None,
    image_token: str = IMAGE_TOKEN,
) -> RenderedPrompt:
    """render(...), split into template text and caller text. The conversation is rendered twice: as given,
    and with every caller string replaced by a random marker; the markers show where each string landed, and
    the split is kept only if putting the strings back gives exactly the first rendering."""
    for msg in messages:  # roles are written by the template between control tokens: only plain words
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise UnsupportedInputError(
                "message role", f"must be a plain word such as 'user' or 'assistant'; got {str(role)[:60]!r}"
            )
    kw: dict[str, Any] = {"add_generation_prompt": add_generation_prompt, "add_system_prompt": add_system_prompt,
          "image_token": image_token}
    text = render(messages, template, system_prompt=system_prompt, **kw)
    nonce = secrets.token_hex(16)
    strings: list[str] = []

    def mark(s: str) -> str:
        if not s:
            return s
        strings.append(s)
        return f"\x00{nonce}:{len(strings) - 1}\x00"

    marked = render(_marked(messages, mark), template,
                    system_prompt=mark(system_prompt) if system_prompt else system_prompt, **kw)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for m in re.finditer(f"\x00{nonce}:(\\d+)\x00", marked):
        if m.start() > pos:
            pieces.append((marked[pos : m.start()], False))
        pieces.append((strings[int(m.group(1))], True))
        pos = m.end()
    if pos < len(marked):
        pieces.append((marked[pos:], False))
    if "".join(p for p, _ in pieces) != text:
        log.info("the chat template rewrites message text; caller text is not kept apart from the template's")
        return RenderedPrompt(text, ((text, False),), False, tuple(strings))
    return RenderedPrompt(text, tuple(pieces), True, tuple(strings))


def encode_rendered(
    rendered: RenderedPrompt,
    tokens_per_placeholder: Sequence[int],
    encode: Callable[[str], Sequence[int]],
    image_token_id: int,
    encode_text: Callable[[str], Sequence[int]] | None = None,
    image_token: str = IMAGE_TOKEN,
) -> NDArray[np.int64]:
    """Token ids of a rendered prompt with its placeholders expanded, where control tokens come only from the
    template: `encode_text` encodes caller text with special tokens read as plain text (None: the encoder has
    no special tokens). A prompt whose caller text holds no control token gets exactly expand(text)'s ids."""
    if encode_text is None or all(list(encode_text(p)) == list(encode(p)) for p in rendered.caller):
        return expand(rendered.text, tokens_per_placeholder, encode, image_token_id, image_token)
    if not rendered.separated:
        raise UnsupportedInputError(
            "--prompt", "the text holds control tokens (such as <|im_end|>) and this chat template rewrites "
            "message text, so they cannot be kept apart from the template's own; remove them from the text"
        )
    ids: list[int] = []
    k = 0
    for piece, mine in rendered.pieces:
        if mine:
            text_ids = [int(i) for i in encode_text(piece)]
            if image_token_id in text_ids:  # an image token that is not a special token: still not text
                raise UnsupportedInputError(
                    "--prompt", f"the text holds the image placeholder {image_token!r}; remove it (images are "
                    "passed as files, and their placeholders are added for them)"
                )
            ids.extend(text_ids)
            continue
        n = piece.count(image_token)
        ids.extend(expand(piece, tokens_per_placeholder[k : k + n], encode, image_token_id, image_token).tolist())
        k += n
    if k != len(tokens_per_placeholder):
        raise UnsupportedInputError(
            "prompt", f"the chat template wrote {k} '{image_token}' placeholders but the visual inputs have "
            f"{len(tokens_per_placeholder)} frames; each frame needs exactly one placeholder"
        )
    return np.asarray(ids, dtype=np.int64)
