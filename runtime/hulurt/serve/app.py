"""The ASGI application (Starlette): OpenAI-compatible /v1/chat/completions (JSON or server-sent events),
/v1/models, /health, /metrics. `create_app(ServerConfig)` builds it; uvicorn (hulurt.serve.cli) or a Ray Serve
replica (hulurt.serve.ray_app) runs it. The bundle loads in a background thread at startup: /health and chat
answer 503 until it is loaded and has answered one check token.

A chat request: API key -> a place in the bounded queue (or 429) -> body read with its size limit (413) ->
JSON checked (400 naming the field) -> uploads decoded into a private directory -> a generation slot -> the
worker thread (hulurt.serve.engine) -> the answer. The directory is removed and the queue place given back
when the worker has finished, before the last byte of the answer is sent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hulurt import __version__
from hulurt.errors import ContextLengthError, HuluRuntimeError, NumericError, UnsupportedInputError
from hulurt.serve import schemas
from hulurt.serve.engine import Engine, EngineConfig, Job, Outcome, execute
from hulurt.serve.limits import Admission, Limits
from hulurt.serve.metrics import Metrics
from hulurt.serve.schemas import APIError, ChatRequest
from hulurt.serve.uploads import Upload, Workspace, too_large

log = logging.getLogger(__name__)
API_KEY_ENV = "HULURT_API_KEY"
_ROUTES = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None  # None: no key asked (the CLI also reads HULURT_API_KEY)
    upload_dir: Path | None = None  # where the server's private upload directory is made (default: system temp)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Gate:
    """Outermost ASGI layer: the API key on every route but /health, and the request counter."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        status = [500]

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            key = self.server.config.api_key
            if key and path != "/health" and not _authorized(scope, key):
                self.server.metrics.errors.labels("authentication_error").inc()
                err = APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               type="authentication_error", code="invalid_api_key")
                await error_response(err)(scope, receive, counted)
                return
            await self.app(scope, receive, counted)
        finally:
            self.server.metrics.requests.labels(route, str(status[0])).inc()


def _authorized(scope: Scope, key: str) -> bool:
    headers = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get(b"x-api-key", b"").decode("latin-1")
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.engine = Engine(config.engine)
        self.admission: Admission | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.upload_root: Path | None = None
        self.fingerprint = f"hulurt-{__version__}"

    # ---- lifecycle ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        lim = self.config.limits
        self.admission = Admission(lim, self.metrics)
        self.pool = ThreadPoolExecutor(lim.concurrency, thread_name_prefix="hulurt-gen")
        self.upload_root = Path(tempfile.mkdtemp(prefix="hulurt-serve-", dir=self.config.upload_dir))
        loader = asyncio.get_running_loop().run_in_executor(None, self._load)
        try:
            yield
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            shutil.rmtree(self.upload_root, ignore_errors=True)
            if not loader.done():
                log.info("shutting down while the bundle is still loading")

    def _load(self) -> None:
        self.engine.load()
        self.metrics.ready.set(1 if self.engine.state == "ready" else 0)

    # ---- routes -------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        e = self.engine
        body: dict[str, Any] = {"status": e.state, "model": e.config.model_name, "pid": os.getpid()}
        if e.state == "failed":
            body["error"] = e.error
        return JSONResponse(body, status_code=200 if e.state == "ready" else 503)

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.engine.config.model_name, "object": "model", "created": self.engine.loaded_at,
                "owned_by": "hulurt"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        if request.path_params["model"] != self.engine.config.model_name:
            raise APIError(404, f"model {request.path_params['model']!r} not found; this server serves "
                           f"{self.engine.config.model_name!r}", code="model_not_found", param="model")
        return JSONResponse(self._model_card())

    async def chat(self, request: Request) -> Response:
        t_recv = time.perf_counter()
        eng = self.engine
        if eng.state != "ready":
            if eng.state == "failed":
                raise APIError(503, f"the model failed to load: {eng.error}", type="server_error",
                               code="model_failed")
            raise APIError(503, "the model is still loading; retry shortly", type="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        assert self.admission is not None
        self.admission.admit()
        ws: Workspace | None = None
        job: Job | None = None
        try:
            req = await self._read(request)
            lim = self.config.limits
            ws = Workspace(self.upload_root, lim.max_upload_bytes, lim.max_volume_bytes)
            uploads = await anyio.to_thread.run_sync(_save_all, ws, req)
            job = Job(asyncio.get_running_loop())
            job.runner = asyncio.create_task(self._run(job, req, uploads, ws, t_recv))
        finally:
            if job is None:  # the runner did not take the request over: give back what we hold
                if ws is not None:
                    ws.close()
                self.admission.leave()
        return await self._answer(request, req, job, ws)

    # ---- the request's steps ------------------------------------------------------------------------

    async def _read(self, request: Request) -> ChatRequest:
        limit = self.config.limits.max_body_bytes
        cl = request.headers.get("content-length", "")
        if cl.isdigit() and int(cl) > limit:
            raise too_large("request body", int(cl), limit)
        chunks, n = [], 0
        async for c in request.stream():
            n += len(c)
            if n > limit:
                raise too_large("request body", n, limit)
            chunks.append(c)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if n < 2**20 else await anyio.to_thread.run_sync(json.loads, raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise schemas.bad(f"the request body is not valid JSON ({e})") from e
        req = schemas.parse_chat_request(body, self.engine.config.model_name)
        if req.model != self.engine.config.model_name:
            raise APIError(404, f"model {req.model!r} not found; this server serves "
                           f"{self.engine.config.model_name!r}", code="model_not_found", param="model")
        return req

    async def _run(self, job: Job, req: ChatRequest, uploads: list[list[Upload]], ws: Workspace,
                   t_recv: float) -> None:
        """Owns the request from its queue place to cleanup; the last event goes out after the cleanup."""
        assert self.admission is not None
        final: tuple[str, Any] = ("done", None)
        try:
            async with self.admission.slot():
                if not job.cancel.is_set():
                    job.started = True
                    loop = asyncio.get_running_loop()
                    out = await loop.run_in_executor(self.pool, execute, self.engine.model, req, uploads, ws, job)
                    final = ("done", out)
                    if out is not None:
                        self._observe(out, t_recv)
        except asyncio.CancelledError:
            final = ("done", None)
        except Exception as e:  # noqa: BLE001 - answered as JSON by _answer
            final = ("error", self._api_error(e, ws))
        finally:
            ws.close()
            self.admission.leave()
            job.events.put_nowait(final)

    def _observe(self, out: Outcome, t_recv: float) -> None:
        m = self.metrics
        if out.cancelled:
            m.cancelled.inc()
        if out.t_first is not None:
            m.ttft.observe(out.t_first - t_recv)
            if out.completion_tokens > 1:
                m.decode.observe((out.t_end - out.t_first) / (out.completion_tokens - 1))
        m.duration.observe(out.t_end - t_recv)
        m.prompt_tokens.inc(out.prompt_tokens)
        m.completion_tokens.inc(out.completion_tokens)
        m.visual_tokens.labels("before").inc(out.visual_tokens_before)
        m.visual_tokens.labels("after").inc(out.visual_tokens_after)
        m.visual_tokens_request.observe(out.visual_tokens_after)

    def _api_error(self, e: BaseException, ws: Workspace | None) -> APIError:
        names = ws.client_names if ws is not None else (lambda s: s)
        if isinstance(e, APIError):
            e.message = names(e.message)
            return e
        if isinstance(e, ContextLengthError):
            msg = names(str(e)).replace("--max-new-tokens", "max_tokens").replace("max_new_tokens", "max_tokens")
            return APIError(400, msg, param="messages", code="context_length_exceeded")
        if isinstance(e, UnsupportedInputError):
            return APIError(400, names(str(e)), param="messages", code="invalid_file")
        if isinstance(e, NumericError):  # the model's fault, not the request's: the operator's message, a 500
            log.error("model error: %s", e)
            return APIError(500, str(e), type="server_error", code="non_finite_logits")
        if isinstance(e, HuluRuntimeError):
            return APIError(400, names(str(e)), code="invalid_input")
        rid = uuid.uuid4().hex[:12]
        log.error("internal error %s: %s: %s", rid, type(e).__name__, e)
        return APIError(500, f"internal error while answering (id {rid}); the server log has the details",
                        type="server_error", code="internal_error")

    async def _answer(self, request: Request, req: ChatRequest, job: Job, ws: Workspace) -> Response:
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            kind, value = await job.events.get()
            if kind == "error":
                raise value
            if kind == "done":  # the client left before the generation started
                return Response(status_code=499)
            cid, created = schemas.new_id(), schemas.now()
            if req.stream:
                watcher.cancel()  # Starlette's StreamingResponse listens for the disconnect from here on
                return StreamingResponse(self._events(job, req, cid, created), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            parts: list[str] = []
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    parts.append(value)
                elif kind == "error":
                    raise value
                else:
                    if value is None:
                        return Response(status_code=499)
                    use = schemas.usage(value.prompt_tokens, value.completion_tokens)
                    return JSONResponse(schemas.completion(cid, req.model, created, "".join(parts),
                                                           value.finish_reason, use, self.fingerprint))
        finally:
            watcher.cancel()

    async def _events(self, job: Job, req: ChatRequest, cid: str, created: int) -> AsyncIterator[str]:
        def sse(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        fp = self.fingerprint
        try:
            yield sse(schemas.chunk(cid, req.model, created, {"role": "assistant", "content": ""}, None, fp))
            while True:
                kind, value = await job.events.get()
                if kind == "text":
                    yield sse(schemas.chunk(cid, req.model, created, {"content": value}, None, fp))
                elif kind == "error":
                    self.metrics.errors.labels(value.type).inc()
                    yield sse(value.body())
                    yield "data: [DONE]\n\n"
                    return
                else:
                    if value is None:
                        return
                    yield sse(schemas.chunk(cid, req.model, created, {}, value.finish_reason, fp))
                    if req.include_usage:
                        use = schemas.usage(value.prompt_tokens, value.completion_tokens)
                        yield sse(schemas.chunk(cid, req.model, created, {}, None, fp, use=use, no_choices=True))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            job.abort()  # a no-op once the worker has finished; otherwise it stops before the next token


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Until cancelled: if the client disconnects, stop the job (it stops between tokens)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.abort()
            return


def _save_all(ws: Workspace, req: ChatRequest) -> list[list[Upload]]:
    return [[ws.save(p) for p in m.uploads] for m in req.messages]


def create_app(config: ServerConfig) -> Starlette:
    server = Server(config)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        server.metrics.errors.labels(exc.type).inc()
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return on_error_sync(APIError(exc.status_code, msg, type="invalid_request_error",
                                      code="not_found" if exc.status_code == 404 else None))

    def on_error_sync(err: APIError) -> Response:
        server.metrics.errors.labels(err.type).inc()
        return error_response(err)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return on_error_sync(server._api_error(exc, None))

    routes = [
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_route, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=server.lifespan,
        middleware=[Middleware(Gate, server=server)],
        exception_handlers={APIError: on_api_error, HTTPException: on_http_error, Exception: on_crash},
    )
    app.state.server = server
    return app
