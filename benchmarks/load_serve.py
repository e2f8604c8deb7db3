"""Load test of `hulurt serve` (a script, not a timed test): N concurrent clients (default 8) with the official
openai client for at least --duration seconds (default 60) against the tiny bundle, on 127.0.0.1 only.

The server runs as an operator starts it (`python -m hulurt serve BUNDLE`, subprocess) with 1 generation at a
time and a queue of --max-queue (default 4): with 8 clients some requests are refused with 429 on purpose;
each client then waits the Retry-After the server sent and tries again. Every other failure counts as an error
and makes the script exit 1. Requests cycle through text (streamed and not), a PNG, a NIfTI volume (nibabel's
anatomical.nii) and a zipped DICOM series (pydicom's CT5N). Bounded: at most --max-requests requests and
--duration + 60 s of wall time.

    python benchmarks/load_serve.py [--bundle DIR] [--clients 8] [--duration 60] [--out benchmarks/results/serve_load]

Writes OUT.md and OUT.json: machine, date, load (uptime) before and after, p50/p95 latency per request kind,
TTFT of streamed answers, throughput, 429 count, and the server's own /metrics counters.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _payloads() -> dict[str, Any]:
    """The request contents, each built once from real files."""
    import nibabel as nib
    import pydicom
    from PIL import Image

    def durl(data: bytes, mime: str) -> str:
        return f"data:{mime};base64," + base64.b64encode(data).decode()

    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8)).save(png, "PNG")
    series = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"CT5N/{f.name}")
    nii = (Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii").read_bytes()
    return {
        "text_stream": ("Describe the heart.", 32, True),
        "text": ("Is the liver normal?", 32, False),
        "png": ([{"type": "image_url", "image_url": {"url": durl(png.getvalue(), "image/png")}},
                 {"type": "text", "text": "What is shown?"}], 16, False),
        "nifti": ([{"type": "file", "file": {"file_data": durl(nii, "application/octet-stream"),
                                             "filename": "anatomical.nii"}},
                   {"type": "text", "text": "Describe the volume."}], 16, True),
        "dicom_zip": ([{"type": "file", "file": {"file_data": durl(z.getvalue(), "application/zip"),
                                                 "filename": "ct5n.zip"}},
                       {"type": "text", "text": "Report the findings."}], 16, False),
    }


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: list[dict[str, Any]] = []
        self.rejected = 0
        self.errors: list[str] = []
        self.sent = 0
        self.answers: dict[str, str] = {}


def client_loop(k: int, url: str, model: str, payloads: dict[str, Any], stats: Stats, stop_at: float,
                max_requests: int) -> None:
    import openai

    c = openai.OpenAI(base_url=url + "/v1", api_key="load-test", max_retries=0, timeout=120)
    kinds = list(payloads)
    i = k  # clients start at different kinds
    while time.monotonic() < stop_at:
        with stats.lock:
            if stats.sent >= max_requests:
                return
            stats.sent += 1
        kind = kinds[i % len(kinds)]
        i += 1
        content, max_tokens, stream = payloads[kind]
        msgs = [{"role": "user", "content": content}]
        t0 = time.perf_counter()
        try:
            if stream:
                ttft = None
                n = 0
                pieces = []
                s = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                              stream=True, stream_options={"include_usage": True})
                for ch in s:
                    if ch.choices and ch.choices[0].delta.content:
                        ttft = time.perf_counter() - t0 if ttft is None else ttft
                        pieces.append(ch.choices[0].delta.content)
                    if ch.usage is not None:
                        n = ch.usage.completion_tokens
                rec = {"kind": kind, "latency_s": time.perf_counter() - t0, "ttft_s": ttft, "tokens": n,
                       "text": "".join(pieces)}
            else:
                r = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0)
                rec = {"kind": kind, "latency_s": time.perf_counter() - t0, "ttft_s": None,
                       "tokens": r.usage.completion_tokens, "text": r.choices[0].message.content}
            with stats.lock:  # greedy: every answer to the same request must be the same text
                first = stats.answers.setdefault(kind, rec["text"])
                if rec["text"] != first:
                    stats.errors.append(f"{kind}: answer differs from the first one ({rec['text']!r} vs {first!r})")
                else:
                    stats.ok.append(rec)
        except openai.RateLimitError as e:  # deliberate: the queue is full; wait what the server asked
            with stats.lock:
                stats.rejected += 1
            wait = float(e.response.headers.get("Retry-After", "1"))
            time.sleep(min(wait, max(0.0, stop_at - time.monotonic())))
        except Exception as e:  # noqa: BLE001 - every other failure is a defect, counted and reported
            with stats.lock:
                stats.errors.append(f"{kind}: {type(e).__name__}: {e}")


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="default: the tests' cached tiny bundle (qwen2)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (>= 60 for the record)")
    p.add_argument("--max-requests", type=int, default=5000, help="upper bound on requests sent")
    p.add_argument("--max-queue", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="server intra-op threads")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load")
    args = p.parse_args(argv)

    if args.bundle is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from e2e.bundles import bundle

        args.bundle = bundle("qwen2")
    payloads = _payloads()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "HULURT_API_KEY"}
    server = subprocess.Popen(
        [sys.executable, "-m", "hulurt.serve", str(args.bundle), "--host", "127.0.0.1", "--port", str(port),
         "--model-name", "tiny", "--provider", "cpu", "--threads", str(args.threads), "--concurrency",
         str(args.concurrency), "--max-queue", str(args.max_queue)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                print(server.stderr.read(), file=sys.stderr)
                return 1
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready after 180 s")
            time.sleep(0.1)
        load_before = _uptime()
        stats = Stats()
        t0 = time.monotonic()
        stop_at = t0 + args.duration
        threads = [threading.Thread(target=client_loop, args=(k, url, "tiny", payloads, stats, stop_at,
                                                              args.max_requests), daemon=True)
                   for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, stop_at + 60 - time.monotonic()))
        wall = time.monotonic() - t0
        load_after = _uptime()
        metrics_text = httpx.get(url + "/metrics", timeout=10).text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    from prometheus_client.parser import text_string_to_metric_families

    server_metrics = {s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
                      for fam in text_string_to_metric_families(metrics_text) for s in fam.samples
                      if s.name in ("hulurt_queue_rejected_total", "hulurt_completion_tokens_total",
                                    "hulurt_prompt_tokens_total", "hulurt_ttft_seconds_count",
                                    "hulurt_ttft_seconds_sum", "hulurt_queue_wait_seconds_sum",
                                    "hulurt_queue_wait_seconds_count", "hulurt_requests_total",
                                    "hulurt_visual_tokens_total")}
    lat = [r["latency_s"] for r in stats.ok]
    ttft = [r["ttft_s"] for r in stats.ok if r["ttft_s"] is not None]
    per_kind = {}
    for kind in payloads:
        xs = [r["latency_s"] for r in stats.ok if r["kind"] == kind]
        per_kind[kind] = {"n": len(xs), "p50_s": pct(xs, 50), "p95_s": pct(xs, 95)}
    tokens = sum(r["tokens"] for r in stats.ok)
    result = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "load_before": load_before, "load_after": load_after,
        "config": {"clients": args.clients, "duration_s": args.duration, "server_concurrency": args.concurrency,
                   "max_queue": args.max_queue, "server_threads": args.threads, "bundle": str(args.bundle)},
        "wall_s": wall, "ok": len(stats.ok), "rejected_429": stats.rejected, "errors": len(stats.errors),
        "error_samples": stats.errors[:10],
        "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95), "latency_p99_s": pct(lat, 99),
        "ttft_stream_p50_s": pct(ttft, 50), "ttft_stream_p95_s": pct(ttft, 95),
        "throughput_req_s": len(stats.ok) / wall, "throughput_completion_tok_s": tokens / wall,
        "per_kind": per_kind, "server_metrics": server_metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    return 1 if stats.errors or not stats.ok else 0


def _markdown(r: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1e3:.0f} ms"

    c = r["config"]
    rows = "\n".join(f"| {k} | {v['n']} | {ms(v['p50_s'])} | {ms(v['p95_s'])} |" for k, v in r["per_kind"].items())
    return f"""# `hulurt serve` load test (benchmarks/load_serve.py)

{c['clients']} concurrent clients (official openai client, threads) for {r['wall_s']:.1f} s against the tiny
random-weight bundle, server `python -m hulurt.serve` on 127.0.0.1 with {c['server_concurrency']} generation(s) at a
time, a queue of {c['max_queue']} and {c['server_threads']} intra-op thread(s). Every answer to the same request
must equal the first one (greedy decoding), or it counts as a failure. With more clients than queue places
some requests get 429 on purpose; the client waits the server's Retry-After and sends again.

- date (UTC): {r['date_utc']}
- machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, Python {r['machine']['python']}
- load before: `{r['load_before']}`
- load after: `{r['load_after']}`

| | value |
|---|---|
| answered requests | {r['ok']} |
| deliberate 429 (queue full) | {r['rejected_429']} |
| failed requests (other than 429) | {r['errors']} |
| latency p50 / p95 / p99 (answered) | {ms(r['latency_p50_s'])} / {ms(r['latency_p95_s'])} / {ms(r['latency_p99_s'])} |
| TTFT of streamed answers p50 / p95 | {ms(r['ttft_stream_p50_s'])} / {ms(r['ttft_stream_p95_s'])} |
| throughput | {r['throughput_req_s']:.2f} requests/s, {r['throughput_completion_tok_s']:.1f} completion tokens/s |

| request kind | answered | p50 | p95 |
|---|---|---|---|
{rows}

Latency is client-side, send to last byte, and includes the time queued behind the other clients. The bundle is
the tests' tiny random-weight model: the numbers measure the server and the runtime's plumbing on this CPU, not
a real model's speed.
"""


if __name__ == "__main__":
    raise SystemExit(main())
