"""`hulurt serve BUNDLE [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--concurrency 1] [--max-queue 8] ...`

Runs the OpenAI-compatible server on uvicorn. Bad arguments or a missing extra: one `error:` line, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hulurt import checks
from hulurt.backends.base import PROVIDERS

MiB = 2**20


def build_parser(prog: str = "hulurt serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a huluexport bundle over HTTP with OpenAI's chat-completions API "
        "(/v1/chat/completions, /v1/models, /health, /metrics). Images, single DICOM files, NIfTI volumes, "
        "zipped DICOM series and videos come as base64 data URLs.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory written by `huluexport build`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: the bundle directory's name)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                   f"(default: the {_env()} environment variable; neither: no key)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="generations at once (default 1)")
    p.add_argument("--max-queue", type=int, default=8, metavar="N",
                   help="requests that may wait for a generation beyond the running ones; more get 429 (default 8)")
    p.add_argument("--max-body-mb", type=float, default=256, metavar="MB",
                   help="largest request body, base64 uploads included (default 256)")
    p.add_argument("--max-upload-mb", type=float, default=192, metavar="MB",
                   help="largest single decoded upload (default 192)")
    p.add_argument("--max-volume-mb", type=float, default=2048, metavar="MB",
                   help="largest decoded volume, unzipped DICOM series or decoded frames (default 2048)")
    p.add_argument("--upload-dir", type=Path, default=None,
                   help="where the private per-request upload directories are made (default: the system temp)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="intra-op threads (0 = engine default)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="execution provider (see python -m hulurt)")
    p.add_argument("--kv-capacity", type=int, default=None, metavar="N",
                   help="most tokens (prompt + new) a request's KV cache holds (default: the bundle's max_context); "
                        "lower it on a GPU short of memory")
    p.add_argument("--skip-hash-check", action="store_true", help="check bundle file sizes only, not sha256")
    p.add_argument("-v", "--verbose", action="store_true", help="log each request and show tracebacks")
    return p


def _env() -> str:
    from hulurt.serve.app import API_KEY_ENV

    return API_KEY_ENV


def config_from_args(args: argparse.Namespace) -> object:
    from hulurt.serve.app import API_KEY_ENV, ServerConfig
    from hulurt.serve.engine import EngineConfig
    from hulurt.serve.limits import Limits

    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"error: {args.bundle}: not a bundle directory (no manifest.json); build one with "
                         "`huluexport build`")
    for name in ("max_body_mb", "max_upload_mb", "max_volume_mb"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0; got {getattr(args, name)}")
    try:
        limits = Limits(concurrency=args.concurrency, max_queue=args.max_queue,
                        max_body_bytes=int(args.max_body_mb * MiB), max_upload_bytes=int(args.max_upload_mb * MiB),
                        max_volume_bytes=int(args.max_volume_mb * MiB))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    reason = checks.kv_capacity(args.kv_capacity)
    if reason is not None:
        raise SystemExit(f"error: --kv-capacity {reason}")
    name = args.model_name or args.bundle.resolve().name
    engine = EngineConfig(bundle=args.bundle, model_name=name, provider=args.provider, threads=args.threads,
                          verify_hashes=not args.skip_hash_check, kv_capacity=args.kv_capacity)
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServerConfig(engine=engine, limits=limits, api_key=key, upload_dir=args.upload_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        import uvicorn

        from hulurt.serve.app import create_app
    except ImportError as e:
        print(f"error: hulurt serve needs the serve extra: pip install 'huluexport-runtime[serve]' ({e})",
              file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and not getattr(config, "api_key", None):
        print(f"warning: listening on {args.host} without an API key: anyone who reaches this port can use the "
              "model; set --api-key or HULURT_API_KEY", file=sys.stderr)
    app = create_app(config)  # type: ignore[arg-type]
    print(f"hulurt serve: {args.bundle} as {config.engine.model_name!r} on http://{args.host}:{args.port} "  # type: ignore[attr-defined]
          "(GET /health says when it is ready)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                access_log=args.verbose, timeout_graceful_shutdown=5)
    return 0
