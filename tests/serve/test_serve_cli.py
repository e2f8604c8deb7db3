"""`hulurt serve` as an operator starts it: the `hulurt` dispatcher in a subprocess on a loopback port, 503 while
loading then ready, an answer through the openai client, API key from the environment, clean stop on SIGTERM;
bad arguments are one line and exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e.bundles import bundle

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
import httpx


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_serve_subprocess_answers_and_stops(tmp_path: Path) -> None:
    tiny = bundle("qwen2")
    port = _free_port()
    env = {**os.environ, "HULURT_API_KEY": "from-env"}
    proc = subprocess.Popen([sys.executable, "-m", "hulurt", "serve", str(tiny), "--port", str(port), "--threads", "1",
                             "--provider", "cpu", "--upload-dir", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.get(url + "/health", timeout=2)
                seen.add(r.status_code)
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and r.json()["status"] == "loading"
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        assert 200 in seen
        c = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0)
        name = tiny.resolve().name
        r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hello?"}], max_tokens=3)
        assert r.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="other", max_retries=0).models.list()
        private = [p for p in tmp_path.iterdir()]
        assert len(private) == 1 and private[0].name.startswith("hulurt-serve-")
        assert oct(private[0].stat().st_mode & 0o777) == "0o700"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the private upload directory goes with the server


def test_bad_arguments_are_one_line_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "hulurt", "serve", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0], r.stderr
    r = subprocess.run([sys.executable, "-m", "hulurt.serve", str(bundle("qwen2")), "--concurrency", "0"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: concurrency"), r.stderr
    r = subprocess.run([sys.executable, "-m", "hulurt.serve", str(bundle("qwen2")), "--kv-capacity", "0"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --kv-capacity must be an integer"), r.stderr
