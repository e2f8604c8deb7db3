"""Scale-out on Ray Serve: the same ASGI app (hulurt.serve.app) as a Ray Serve deployment of N replicas, each
replica one process with one model load (one GPU each with --gpus-per-replica 1, or CPU slots). Ray's proxy
spreads requests over the replicas; each replica keeps its own bounded queue, limits and /metrics.

On a Ray cluster (the bundle at the same path on every node, e.g. a shared file system):

    ray start --head                                     # on the head node; `ray start --address HEAD:6379` on others
    python -m hulurt.serve.ray_app BUNDLE --address auto --replicas 4 --gpus-per-replica 1 --host 0.0.0.0 --port 8000
    # or with Ray's own CLI:  serve run hulurt.serve.ray_app:app_builder bundle=BUNDLE replicas=4 gpus_per_replica=1

Needs the `ray` extra: pip install 'huluexport-runtime[ray]'.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hulurt.serve.app import API_KEY_ENV, ServerConfig
from hulurt.serve.engine import EngineConfig
from hulurt.serve.limits import Limits


def deployment(config: ServerConfig, replicas: int = 2, cpus_per_replica: float = 1.0,
               gpus_per_replica: float = 0.0) -> Any:
    """A bound Ray Serve application: `replicas` copies of create_app(config)."""
    from ray import serve

    def build() -> Any:  # runs on each replica: one app, one model load
        from hulurt.serve.app import create_app

        return create_app(config)

    lim = config.limits

    @serve.deployment(
        name="hulurt",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # Ray's proxy holds further requests; each replica answers 429 itself past its own queue
        max_ongoing_requests=lim.concurrency + lim.max_queue + 1,
        health_check_period_s=5,
    )
    @serve.ingress(build)
    class HuluReplica:
        pass

    return HuluReplica.bind()  # type: ignore[attr-defined]  # @serve.deployment made the class a Deployment


def app_builder(args: dict[str, str]) -> Any:
    """For `serve run hulurt.serve.ray_app:app_builder bundle=PATH replicas=2 ...` (string arguments)."""
    bundle = Path(args["bundle"])
    cfg = ServerConfig(
        EngineConfig(bundle, args.get("model_name") or bundle.resolve().name, provider=args.get("provider", "auto"),
                     threads=int(args.get("threads", 0)),
                     kv_capacity=int(args["kv_capacity"]) if args.get("kv_capacity") else None),
        limits=Limits(concurrency=int(args.get("concurrency", 1)), max_queue=int(args.get("max_queue", 8))),
        api_key=args.get("api_key") or os.environ.get(API_KEY_ENV) or None,
    )
    return deployment(cfg, int(args.get("replicas", 2)), float(args.get("cpus_per_replica", 1)),
                      float(args.get("gpus_per_replica", 0)))


def start(config: ServerConfig, *, replicas: int, host: str = "127.0.0.1", port: int = 8000,
          cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, address: str | None = None,
          num_cpus: int | None = None) -> None:
    """Connect to (address) or start a local Ray, start Serve's HTTP proxy on host:port and deploy. Returns
    once every replica is up (not necessarily loaded: GET /health answers per replica)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas, cpus_per_replica, gpus_per_replica), name="hulurt", route_prefix="/")


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    from hulurt.serve.cli import build_parser, config_from_args

    p = build_parser(prog="python -m hulurt.serve.ray_app")
    p.description = "Serve a bundle on Ray Serve with N replicas (same API as `hulurt serve`)."
    p.add_argument("--replicas", type=int, default=2, help="replicas (one model load each; default 2)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per replica")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="Ray GPUs per replica (1 on a GPU cluster)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto' after `ray start`); default: start a local Ray")
    args = p.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError as e:
        print(f"error: the Ray deployment needs the ray extra: pip install 'huluexport-runtime[ray]' ({e})",
              file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    start(config, replicas=args.replicas, host=args.host, port=args.port,  # type: ignore[arg-type]
          cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica, address=args.address)
    print(f"hulurt on Ray Serve: {args.replicas} replica(s) at http://{args.host}:{args.port} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
