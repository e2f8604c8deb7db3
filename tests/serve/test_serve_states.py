"""A bundle that fails its check at startup: /health answers 503 with the reason, chat answers OpenAI error JSON
503 (never a traceback), and nothing else breaks (models, metrics still answer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.bundles import bundle, copy_bundle

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
import httpx
from hulurt.serve.app import ServerConfig, create_app
from hulurt.serve.engine import EngineConfig
from serve.live import LiveServer


def _health_after_loading(s: LiveServer, timeout_s: float) -> httpx.Response:
    """/health once the server has left "loading" (LiveServer.start waits for 200, which a failed load never
    answers)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            h = httpx.get(s.url + "/health", timeout=2)
            if h.json()["status"] != "loading" or time.monotonic() >= deadline:
                return h
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def _failed_at_startup(s: LiveServer, model: str, timeout_s: float) -> tuple[str, openai.OpenAI]:
    """A server whose bundle failed its load: /health 503 "failed" and chat 503 model_failed, as OpenAI error JSON
    without a traceback. Returns /health's error and the client."""
    h = _health_after_loading(s, timeout_s)
    assert h.status_code == 503 and h.json()["status"] == "failed"
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503 and e.value.body["code"] == "model_failed"
    assert "Traceback" not in e.value.response.text
    return h.json()["error"], c


def test_corrupted_bundle_is_503_with_the_reason(tmp_path: Path) -> None:
    broken = copy_bundle(bundle("qwen2"), tmp_path / "b")
    data = broken / "embed.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # same size, different sha256
    data.write_bytes(bytes(raw))
    app = create_app(ServerConfig(EngineConfig(broken, "broken", provider="cpu", threads=1), upload_dir=tmp_path))
    s = LiveServer(app)
    s.thread.start()
    try:
        error, c = _failed_at_startup(s, "broken", 60)
        assert "embed.onnx.data" in error and "sha256" in error
        assert [m.id for m in c.models.list()] == ["broken"]
        assert "hulurt_model_ready 0.0" in httpx.get(s.url + "/metrics").text
    finally:
        s.stop()


def test_a_bundle_that_computes_nan_fails_at_startup_with_the_cause(tmp_path: Path) -> None:
    """An fp16 bundle whose activations overflow (tests/e2e/bundles.py, overflow_bundle) computes NaN logits. The
    load's one-token check finds it (hulurt.sampling.check_logits): /health 503 with the cause, chat 503; and a
    request that meets NaN logits later is the model's fault, a 500 server_error naming it, never a 400."""
    from e2e.bundles import overflow_bundle
    from hulurt.errors import NumericError

    app = create_app(ServerConfig(EngineConfig(overflow_bundle("fp16"), "hot", provider="cpu", threads=1),
                                  upload_dir=tmp_path))
    s = LiveServer(app)
    s.thread.start()
    try:
        error, _ = _failed_at_startup(s, "hot", 120)
        assert "NumericError" in error and "huluexport verify" in error
    finally:
        s.stop()
    err = app.state.server._api_error(NumericError("the decoder returned 3 of 9 logits that are not finite"), None)
    assert (err.status, err.code, err.type) == (500, "non_finite_logits", "server_error") and "3 of 9" in err.message
