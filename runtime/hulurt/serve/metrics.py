"""Prometheus metrics of one server (its own registry, so several apps in one process never share counters).
Names follow Prometheus conventions: *_total counters, *_seconds histograms."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# latency buckets from 10 ms to 5 min: a tiny CPU bundle answers in tens of ms, a 7B model on a volume in minutes
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("hulurt_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.errors = Counter("hulurt_request_errors", "Requests answered with an error, by OpenAI error type",
                              ["type"], registry=r)
        self.rejected = Counter("hulurt_queue_rejected", "Chat requests refused with 429 because the queue was full",
                                registry=r)
        self.cancelled = Counter("hulurt_generations_cancelled",
                                 "Generations stopped early because the client disconnected", registry=r)
        self.queue_depth = Gauge("hulurt_queue_depth", "Chat requests waiting for a generation slot", registry=r)
        self.running = Gauge("hulurt_generations_running", "Generations running now", registry=r)
        self.ready = Gauge("hulurt_model_ready", "1 once the bundle is loaded and checked", registry=r)
        self.queue_wait = Histogram("hulurt_queue_wait_seconds", "Time a chat request waited for a slot",
                                    buckets=_LATENCY, registry=r)
        self.ttft = Histogram("hulurt_ttft_seconds",
                              "Request received -> first answer text ready (queue, uploads, preprocessing, vision, "
                              "prefill)", buckets=_LATENCY, registry=r)
        self.decode = Histogram("hulurt_decode_seconds_per_token", "Decode time per generated token after the first",
                                buckets=_PER_TOKEN, registry=r)
        self.duration = Histogram("hulurt_request_duration_seconds", "Chat request received -> answer complete",
                                  buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("hulurt_prompt_tokens", "Prompt tokens processed (incl. visual)", registry=r)
        self.completion_tokens = Counter("hulurt_completion_tokens", "Tokens generated", registry=r)
        self.visual_tokens = Counter("hulurt_visual_tokens", "Visual tokens, before and after token reduction",
                                     ["stage"], registry=r)
        self.visual_tokens_request = Histogram("hulurt_visual_tokens_per_request",
                                               "Visual tokens fed to the decoder per request (after reduction)",
                                               buckets=_TOKENS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
