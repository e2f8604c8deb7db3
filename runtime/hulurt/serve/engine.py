"""The model side of the server: one `hulurt.load` per process, a self-check before it is called ready, and
the work of one chat request in a worker thread (uploads -> Media -> the chat template over every turn ->
hulurt.api.Model.run), its text handed to the event loop piece by piece. Stop strings and cancellation
(client gone) are checked between pieces."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hulurt.errors import HuluRuntimeError, UnsupportedInputError
from hulurt.sampling import SamplingConfig
from hulurt.serve.schemas import APIError, ChatRequest
from hulurt.serve.uploads import Upload, Workspace, too_large

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    bundle: Path
    model_name: str
    provider: str = "auto"
    threads: int = 0
    verify_hashes: bool = True
    kv_capacity: int | None = None  # hulurt.load's: most tokens a request's KV cache holds


class Engine:
    """Holds the loaded Model. state: "loading" -> "ready" | "failed"."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.state = "loading"
        self.error = ""
        self.model: Any = None
        self.loaded_at = 0

    def load(self) -> None:
        """Load the bundle (manifest, sha256 of every file, sessions) and answer one token as a check."""
        from hulurt.api import load

        t = time.perf_counter()
        try:
            model = load(self.config.bundle, provider=self.config.provider, threads=self.config.threads,
                         verify_hashes=self.config.verify_hashes, kv_capacity=self.config.kv_capacity)
            model.generate("Ready?", max_new_tokens=1)  # every graph of a text request runs once
        except Exception as e:  # noqa: BLE001 - reported on /health and in the log, never raised to a client
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("bundle %s failed to load: %s", self.config.bundle, self.error)
            return
        self.model = model
        self.loaded_at = int(time.time())
        self.state = "ready"
        log.info("bundle %s ready in %.1f s (provider %s)", self.config.bundle, time.perf_counter() - t,
                 model.provider)


# --------------------------------------------------------------------------------------------------- jobs


@dataclass
class Outcome:
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    visual_tokens_before: int
    visual_tokens_after: int
    t_first: float | None  # perf_counter when the first text was ready
    t_end: float
    cancelled: bool = False


@dataclass
class Job:
    """One request's bridge between the worker thread and the event loop."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # set on the loop thread when the worker is handed the job
    runner: asyncio.Task[None] | None = None

    def emit(self, kind: str, value: Any = None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def abort(self) -> None:
        """The client is gone: stop between tokens, or never start."""
        self.cancel.set()
        if not self.started and self.runner is not None:
            self.runner.cancel()


class StopStrings:
    """Cuts the answer before the first stop string, holding back any tail that could begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.buf = ""

    def push(self, piece: str) -> tuple[str, bool]:
        self.buf += piece
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def sampling_of(req: ChatRequest) -> SamplingConfig:
    rp = 1.0 if req.repetition_penalty is None else float(req.repetition_penalty)
    if req.greedy:
        return SamplingConfig(greedy=True, repetition_penalty=rp)
    return SamplingConfig(greedy=False, temperature=float(req.temperature or 1.0),
                          top_p=1.0 if req.top_p is None else float(req.top_p), seed=req.seed, repetition_penalty=rp)


def prepare(model: Any, req: ChatRequest, uploads: Sequence[Sequence[Upload]], ws: Workspace) -> Any:
    """Every turn through the bundle's chat template (media in the turn that carried them, before its text, as
    `Model.inputs` places them) -> the loop's PromptFeed."""
    from hulurt.api import feed_of
    from hulurt.inputs import build_inputs, content_item
    from hulurt.media import load_media

    t0 = time.perf_counter()
    opts, reader_options = model.input_options()
    flat = [u for turn in uploads for u in turn]
    if flat and not model.has_vision:
        raise UnsupportedInputError(flat[0].display, "this bundle is text-only (no vision piece): it cannot take "
                                    "images, volumes or videos; ask a text question")
    last = req.messages[-1]
    if not last.text.strip() and not uploads[-1]:
        raise UnsupportedInputError("messages", "the last user message is empty; ask a question")
    media: list[Any] = []
    conv: list[dict[str, Any]] = []
    for msg, ups in zip(req.messages, uploads):
        if msg.role != "user":
            conv.append({"role": msg.role, "content": msg.text})
            continue
        items: list[dict[str, Any]] = []
        for up in ups:
            ws.check_volume(up)
            m = load_media(up.path, **dict(reader_options.get(up.kind, {})))
            if m.frames.nbytes > ws.max_volume:
                raise too_large(f"{up.display}: decoded frames {tuple(m.frames.shape)}", m.frames.nbytes,
                                ws.max_volume)
            media.append(m)
            items.append(content_item(m, opts.video_timestamps))
        items.append({"type": "text", "text": msg.text})
        conv.append({"role": "user", "content": items})
    inputs = build_inputs(media, last.text, model.tokenizer, model.facts.image_token_id, opts, model.chat_template,
                          reader_options=reader_options, history=conv[:-1], history_media=len(media) - len(uploads[-1]))
    return feed_of(inputs, preprocess_s=time.perf_counter() - t0)


def execute(model: Any, req: ChatRequest, uploads: Sequence[Sequence[Upload]], ws: Workspace,
            job: Job) -> Outcome | None:
    """The worker thread's part of a request: emits ("ready", prompt_tokens) once the request is checked, then
    ("text", s) per piece; returns the Outcome (None when cancelled before generating). Errors propagate."""
    try:
        feed = prepare(model, req, uploads, ws)
        if job.cancel.is_set():
            return None
        gen = model.run(feed, max_new_tokens=req.max_tokens, sampling=sampling_of(req))  # checks the context
    except Exception as e:
        if not isinstance(e, (HuluRuntimeError, APIError)):
            log.exception("request failed before generating")
        raise
    n_prompt = int(feed.input_ids.shape[0])
    job.emit("ready", n_prompt)
    stops = StopStrings(req.stop)
    t_first = None
    finish = None
    it = iter(gen)
    try:
        for piece in it:
            if job.cancel.is_set():
                break
            out, hit = stops.push(piece)
            if out:
                t_first = t_first or time.perf_counter()
                job.emit("text", out)
            if hit:
                finish = "stop"
                break
        else:
            tail = stops.flush()
            if tail:
                t_first = t_first or time.perf_counter()
                job.emit("text", tail)
    except Exception:
        log.exception("generation failed")
        raise
    finally:
        getattr(it, "close", lambda: None)()  # early exit: release the generator (and its KV cache) now
    if finish is None:
        finish = "stop" if gen.stop_reason == "stop_id" else "length"
    return Outcome(
        finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=len(gen.token_ids),
        visual_tokens_before=sum(v.tokens_before for v in feed.visuals),
        visual_tokens_after=sum(v.tokens_after for v in feed.visuals),
        t_first=t_first, t_end=time.perf_counter(), cancelled=job.cancel.is_set(),
    )
