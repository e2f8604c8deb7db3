"""Tokenizer: the Rust `tokenizers` library (never transformers) for encoding, and streaming-safe decoding that
holds back partial UTF-8, skips special tokens and can hide <think> spans (docs/model.md §2.5, §7.4).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hulurt.errors import UnsupportedInputError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_SPAN = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_BLANK_RUNS = re.compile(r"\n\s*\n")
_REPLACEMENT = "\ufffd"


def strip_think(text: str) -> str:
    """Remove <think>...</think> spans (an unclosed one runs to the end), collapse blank-line runs, strip --
    what the HF processor's batch_decode(use_think=False) does, in our words."""
    return _BLANK_RUNS.sub("\n\n", _THINK_SPAN.sub("", text)).strip()


class Tokenizer:
    """A `tokenizers.Tokenizer` loaded from tokenizer.json. No BOS is ever added (Qwen)."""

    def __init__(self, tok: Any, source: str = "<tokenizer>") -> None:
        self._tok = tok
        self.source = source
        added = tok.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self._special_texts = tuple(t.content for t in added.values() if t.special)
        self._text_tok: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """tokenizer.json, or a directory holding one."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise UnsupportedInputError(p, "tokenizer.json not found")
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as e:
            raise UnsupportedInputError(
                p, f"needs the 'tokenizers' package: pip install 'huluexport-runtime[tokenizer]' ({e})"
            ) from e
        try:
            tok = _Tok.from_file(str(p))
        except Exception as e:  # the Rust side raises plain Exception on bad JSON
            raise UnsupportedInputError(p, f"cannot load tokenizer: {e}") from e
        return cls(tok, str(p))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int | None:
        i = self._tok.token_to_id(token)
        return None if i is None else int(i)

    def require_id(self, token: str) -> int:
        i = self.token_id(token)
        if i is None:
            raise UnsupportedInputError(self.source, f"tokenizer has no token {token!r}")
        return i

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; added tokens in the text (e.g. <|im_start|>) become their single ids. For template
        text only: what a user typed goes through encode_text."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_text(self, text: str) -> list[int]:
        """Ids of user text: special tokens written in it (<|im_end|>, <image>) are encoded as the characters
        they are made of, never as control ids (what transformers calls split_special_tokens)."""
        if not any(s in text for s in self._special_texts):
            return self.encode(text)
        with self._lock:
            if self._text_tok is None:  # a copy that reads special tokens as text, built on first need
                from tokenizers import Tokenizer as _Tok

                tok = _Tok.from_str(self._tok.to_str())
                tok.encode_special_tokens = True
                self._text_tok = tok
        return list(self._text_tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def stream(self, skip_special_tokens: bool = True, hide_think: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens, hide_think)


class StreamDecoder:
    """Incremental detokenisation: push ids one at a time, get text deltas whose concatenation equals
    decode(all ids) (minus think spans if hidden).

    Byte-level BPE splits multi-byte characters across tokens, so decoding one id alone can give U+FFFD.
    We keep a window [prefix, read) of already-emitted ids and re-decode the window plus new ids, emitting
    only once the tail is no longer an incomplete character (the scheme of text-generation-inference's
    decode_token, in our own words). Think spans are filtered on the text, holding back any suffix that
    could still become "<think>" or "</think>".
    """

    def __init__(
        self, tokenizer: Tokenizer, skip_special_tokens: bool = True, hide_think: bool = False
    ) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._hide = hide_think
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._in_think = False
        self._held = ""
        self._emitted_any = False

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read], self._skip)
        new_text = self._tok.decode(self._ids[self._prefix :], self._skip)
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return self._filter(delta, final=False)
        return ""

    def push_many(self, ids: Sequence[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        """The rest at end of generation (an incomplete character is emitted as U+FFFD, as decode does)."""
        rest = ""
        if self._read < len(self._ids):
            prefix_text = self._tok.decode(self._ids[self._prefix : self._read], self._skip)
            new_text = self._tok.decode(self._ids[self._prefix :], self._skip)
            rest = new_text[len(prefix_text) :]
            self._prefix = self._read = len(self._ids)
        return self._filter(rest, final=True)

    def _filter(self, delta: str, final: bool) -> str:
        if not self._hide:
            return delta
        text = self._held + delta
        self._held = ""
        out: list[str] = []
        while text:
            tag = THINK_CLOSE if self._in_think else THINK_OPEN
            k = text.find(tag)
            if k >= 0:
                if not self._in_think:
                    out.append(text[:k])
                text = text[k + len(tag) :]
                self._in_think = not self._in_think
                continue
            keep = 0 if final else _partial_suffix(text, tag)
            if not self._in_think:
                out.append(text[: len(text) - keep])
            self._held = text[len(text) - keep :] if keep else ""
            break
        s = "".join(out)
        if not self._emitted_any:  # the answer after a think span starts with blank lines: drop them
            s = s.lstrip("\n")
            self._emitted_any = bool(s)
        return s


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
