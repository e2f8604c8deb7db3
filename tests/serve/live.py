"""A real uvicorn server on a loopback port in a background thread (the socket is bound before the thread starts,
so the port is free and known), for the serve tests and the load benchmark."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx


class LiveServer:
    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, ready_timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return self
                if r.json().get("status") == "failed":
                    raise RuntimeError(f"server failed to load: {r.text}")
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server at {self.url} not ready after {ready_timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    @property
    def upload_root(self) -> Path:
        return self.app.state.server.upload_root

    def __enter__(self) -> LiveServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
