"""Scale-out: hulurt.serve.ray_app deploys the same ASGI app as a 2-replica Ray Serve deployment on this
machine (local Ray, 2 CPU slots, HTTP proxy on 127.0.0.1) and requests go through Ray's proxy: both replicas
answer /health, and the answers equal `hulurt.load(bundle).generate`, streamed and not. Takes ~40-70 s on the
2-core CI machine (Ray start + two model loads), so it is marked slow; `make test` runs it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from e2e.bundles import bundle

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
import httpx
import hulurt
from hulurt.serve.app import ServerConfig
from hulurt.serve.engine import EngineConfig

pytestmark = pytest.mark.slow


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_two_replica_deployment_answers_through_ray(tmp_path: Path) -> None:
    from hulurt.serve import ray_app

    tiny = bundle("qwen2")
    ref = hulurt.load(tiny, provider="cpu", threads=1, verify_hashes=False).generate(
        "Describe the heart.", max_new_tokens=10)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    cfg = ServerConfig(EngineConfig(tiny, "hulu-tiny", provider="cpu", threads=1), upload_dir=tmp_path)
    try:
        ray_app.start(cfg, replicas=2, host="127.0.0.1", port=port, num_cpus=2)
        pids: set[int] = set()
        deadline = time.monotonic() + 180
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                r = httpx.get(url + "/health", timeout=5)
                if r.status_code == 200:
                    pids.add(r.json()["pid"])
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert len(pids) == 2, f"expected two ready replicas behind the proxy; saw {pids}"
        print(f"2 replicas ready after {time.monotonic() - t0:.1f} s")
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "Describe the heart."}]
        for _ in range(4):  # several requests: the proxy spreads them, every replica answers the same
            r = c.chat.completions.create(model="hulu-tiny", messages=msgs, max_tokens=10, temperature=0)
            assert r.choices[0].message.content == ref.text
            assert r.usage.completion_tokens == len(ref.token_ids)
        s = c.chat.completions.create(model="hulu-tiny", messages=msgs, max_tokens=10, temperature=0, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == ref.text
        with pytest.raises(openai.BadRequestError, match="temperature"):
            c.chat.completions.create(model="hulu-tiny", messages=msgs, temperature=9)
    finally:
        ray_app.stop()
    print(f"ray test total {time.monotonic() - t0:.1f} s")
