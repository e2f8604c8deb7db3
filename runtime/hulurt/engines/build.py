"""Build one TensorRT engine per piece of a bundle (`python -m hulurt.engines`, `huluexport engines`).

Strongly typed networks (the ONNX carries its own fp16/fp32 islands and int4 weight blocks, so TensorRT keeps
them instead of choosing precisions itself), one optimization profile per piece from the manifest's dim ranges
(optionally narrowed), a timing cache persisted next to the engine directories (`tensorrt`; TensorRT-RTX made
its timing cache a no-op and the builder says so), builder optimisation level and workspace limit as options,
the token-reduction plugin library loaded when a graph holds the custom op. Everything is written into a
staging directory and moved into place with engines.json (hulurt/engines/meta.py) last.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hulurt import manifest as rt
from hulurt.contract import DECODER_FORMS, OPS, DimRange
from hulurt.engines import meta as em
from hulurt.engines.device import Gpu, load_trt, parse_sm, query_gpu, rtx_capability
from hulurt.engines.profiles import Profile, narrow, profile_shapes
from hulurt.engines.staging import staged_dir, write_atomic

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"  # inside the bundle
OPT_LEVELS = range(6)


@dataclass(frozen=True)
class BuildOptions:
    bundle: Path
    out: Path | None = None  # the engine directory itself; default BUNDLE/engines/<device>-<module><version>
    pieces: tuple[str, ...] = ()  # default: every piece of the manifest
    module: str | None = None  # "tensorrt" | "tensorrt_rtx"; default: whichever is installed (tensorrt first)
    sm: tuple[str, ...] = ()  # tensorrt_rtx: compute capabilities to build for ("8.9"); () = portable
    label: str | None = None  # the <device> part of the directory name (a target name such as orin-nano)
    max_context: int | None = None
    max_frames: int | None = None
    max_groups: int | None = None
    optimization_level: int = 3
    workspace_bytes: int | None = None
    timing_cache: Path | None = None  # default: <engines dir's parent>/timing-<module><version>.cache
    plugins: tuple[Path, ...] = ()  # plugin libraries; default: $HULU_TRT_PLUGIN when a graph needs one
    overwrite: bool = False
    device_id: int = 0


@dataclass(frozen=True)
class PiecePlan:
    piece: str
    onnx: Path
    plan_file: str
    profile: Profile
    precision: str
    custom_ops: tuple[str, ...]


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT runs (also what --print-trtexec prints)."""

    module: str
    version: str
    device_name: str
    compute_capabilities: tuple[str, ...]
    portable: bool
    out: Path
    timing_cache: Path | None
    plugins: tuple[Path, ...]
    pieces: tuple[PiecePlan, ...]
    options: BuildOptions
    manifest: rt.Manifest


def custom_ops(onnx_path: Path) -> tuple[str, ...]:
    """Custom ops of hulurt.contract.OPS that a graph uses, found as their strings in the graph file (protobuf
    stores op_type and domain verbatim; the weights are in the external data file, so this reads a small file)."""
    data = onnx_path.read_bytes()
    return tuple(
        f"{op.domain}::{op.name}" for op in OPS.values() if op.name.encode() in data and op.domain.encode() in data
    )


def default_pieces(m: rt.Manifest) -> tuple[str, ...]:
    """The pieces hulurt's TensorRT paths run (--provider trt-native / tensorrt): every piece but the gqa-static
    decoder, whose in-place KV buffers are onnxruntime's GroupQueryAttention (docs/gpu.md); they decode with the
    v1 decoder, so a bundle without one is refused here rather than at the first request."""
    v1, gqa = DECODER_FORMS["v1-concat"], DECODER_FORMS["gqa-static"]
    if v1 not in m.pieces:
        raise em.EngineError(
            f"{m.path}: the bundle has no {v1!r} piece (the v1-concat decoder form, the one TensorRT builds); it "
            f"has {sorted(m.pieces)}. Rebuild it with `huluexport build --decoder-form v1-concat` (add "
            "`--decoder-form gqa-static` to keep the onnxruntime GPU form too)"
        )
    return tuple(p for p in m.pieces if p != gqa)


def _ranges(m: rt.Manifest, o: BuildOptions) -> dict[str, DimRange]:
    """The manifest's ranges, narrowed by --max-context/--max-frames/--max-groups (never widened)."""
    return narrow(m.dim_ranges, max_context=o.max_context, max_frames=o.max_frames, max_groups=o.max_groups)


def plan_build(o: BuildOptions, trt: Any | None = None) -> BuildPlan:
    """Read the manifest, pick module/device/profiles/paths; TensorRT itself is only asked its name and version."""
    if o.optimization_level not in OPT_LEVELS:
        raise em.EngineError(f"--opt-level {o.optimization_level}: expected 0..5 (TensorRT's builder levels)")
    if o.workspace_bytes is not None and o.workspace_bytes <= 0:
        raise em.EngineError(f"--workspace {o.workspace_bytes}: expected a positive number of bytes")
    m = rt.load_manifest(o.bundle, verify_hashes=False)
    trt = trt if trt is not None else load_trt(o.module)
    module, version = trt.__name__, trt.__version__
    gpu: Gpu | None = None
    sms = tuple(parse_sm(s) for s in o.sm)
    if module == "tensorrt_rtx":
        for cc in sms:
            rtx_capability(trt, cc)
        portable = not sms
        ccs = sms
        device = o.label or ("portable" if portable else "+".join("sm" + c.replace(".", "") for c in sms))
    else:
        gpu = query_gpu(o.device_id)
        if gpu is None:
            raise em.EngineError(
                f"{module} {version} builds engines for the GPU it runs on, and no GPU was found (cuda-python, "
                "nvidia-smi); build on the target device, or use tensorrt-rtx to build ahead of time on a CPU"
            )
        if sms and gpu.compute_capability not in sms:
            raise em.EngineError(
                f"--sm {', '.join(sms)}: {module} builds only for this GPU ({gpu.name}, compute capability "
                f"{gpu.compute_capability})"
            )
        portable, ccs, device = False, (gpu.compute_capability,), o.label or gpu.name
    out = Path(o.out) if o.out is not None else m.root / ENGINES_DIR / em.dir_name(device, module, version)
    cache = o.timing_cache
    if module == "tensorrt_rtx":
        if cache is not None:
            log.warning("--timing-cache %s ignored: TensorRT-RTX made its timing cache a no-op", cache)
        cache = None
    elif cache is None:
        cache = out.parent / f"timing-{module}{version}.cache"
    ranges = _ranges(m, o)
    specs = m.specs()
    names = o.pieces or default_pieces(m)
    plans = []
    for name in names:
        if name not in m.pieces:
            raise em.EngineError(f"{m.path}: no piece {name!r} to build; the bundle has {sorted(m.pieces)}")
        path = m.piece_path(name)
        plans.append(
            PiecePlan(
                piece=name,
                onnx=path,
                plan_file=f"{name}.plan",
                profile=profile_shapes(specs[name], ranges),
                precision=m.pieces[name].precision,
                custom_ops=custom_ops(path),
            )
        )
    plugins = tuple(Path(p) for p in o.plugins)
    if not plugins and any(p.custom_ops for p in plans) and os.environ.get("HULU_TRT_PLUGIN"):
        plugins = (Path(os.environ["HULU_TRT_PLUGIN"]),)
    needing = [f"{p.onnx.name} ({', '.join(p.custom_ops)})" for p in plans if p.custom_ops]
    if needing and not plugins:
        raise em.EngineError(
            f"{needing[0]} uses a custom op whose TensorRT plugin is not loaded: build it with `make -C kernels` "
            "and pass --plugin kernels/build/libhulu_plugins.so (or set HULU_TRT_PLUGIN)"
        )
    for p in plugins:
        if not p.is_file():
            raise em.EngineError(f"--plugin {p}: file not found")
    return BuildPlan(module, version, device, ccs, portable, out, cache, plugins, tuple(plans), o, m)


def _config(trt: Any, builder: Any, plan: BuildPlan, cache_blob: bytes) -> tuple[Any, Any]:
    o = plan.options
    config = builder.create_builder_config()
    config.builder_optimization_level = o.optimization_level
    if o.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, o.workspace_bytes)
    if plan.module == "tensorrt_rtx" and plan.compute_capabilities:
        config.num_compute_capabilities = len(plan.compute_capabilities)
        for i, cc in enumerate(plan.compute_capabilities):
            config.set_compute_capability(rtx_capability(trt, cc), i)
    cache = None
    if plan.timing_cache is not None:
        cache = config.create_timing_cache(cache_blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config, cache


Phase = Callable[[str], AbstractContextManager[Any]]


def _no_phase(name: str) -> AbstractContextManager[Any]:
    return nullcontext()


def build_piece(trt: Any, plan: BuildPlan, pp: PiecePlan, cache_blob: bytes) -> tuple[memoryview, bytes, float]:
    """Parse and build one engine; returns (serialized engine, updated timing cache, seconds)."""
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if log.isEnabledFor(logging.DEBUG) else trt.Logger.ERROR)
    builder = trt.Builder(logger)
    for lib in plan.plugins:
        builder.get_plugin_registry().load_library(str(lib))
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(pp.onnx)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise em.EngineError(f"{pp.onnx}: {plan.module} {plan.version} cannot parse it: {errs}")
    config, cache = _config(trt, builder, plan, cache_blob)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in pp.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise em.EngineError(
            f"{pp.onnx}: {plan.module} {plan.version} parsed it but the engine build failed (run with -v for the "
            "builder log)"
        )
    blob = bytes(memoryview(cache.serialize())) if cache is not None else b""
    return memoryview(serialized), blob, time.perf_counter() - t0


def build_engines(o: BuildOptions, trt: Any | None = None, phase: Phase | None = None) -> em.EngineMeta:
    """Build every piece's engine into a staging directory, write engines.json, move it to plan.out. `phase(name)`
    (a context manager, e.g. huluexport's progress.phase) wraps each piece's build, for a caller that shows it."""
    phase = phase or _no_phase
    trt = trt if trt is not None else load_trt(o.module)
    plan = plan_build(o, trt)
    m = plan.manifest
    blob = b""
    if plan.timing_cache is not None and plan.timing_cache.is_file():
        blob = plan.timing_cache.read_bytes()
    entries: dict[str, em.EngineEntry] = {}
    with staged_dir(plan.out, overwrite=o.overwrite, marker=em.META) as tmp:
        for pp in plan.pieces:
            with phase(f"{pp.piece}: {plan.module} engine"):
                engine, blob, seconds = build_piece(trt, plan, pp, blob)
            f = tmp / pp.plan_file
            with open(f, "wb") as fh:
                fh.write(engine)
            f.chmod(0o644)
            rel = m.pieces[pp.piece].file
            entries[pp.piece] = em.EngineEntry(
                piece=pp.piece,
                file=pp.plan_file,
                bytes=f.stat().st_size,
                sha256=em.sha256_file(f),
                onnx=rel,
                onnx_sha256=m.files[rel].sha256 if rel in m.files else "",
                precision=pp.precision,
                build_seconds=seconds,
                profiles=[pp.profile],
            )
            log.info("%s: %s built, %d bytes, %.1f s", plan.module, pp.plan_file, entries[pp.piece].bytes, seconds)
            if plan.timing_cache is not None and blob:
                write_atomic(plan.timing_cache, blob)  # after each piece: an interrupted build keeps its timings
        meta = em.EngineMeta(
            root=tmp,
            module=plan.module,
            version=plan.version,
            device_name=plan.device_name,
            compute_capabilities=plan.compute_capabilities,
            portable=plan.portable,
            builder={
                "strongly_typed": True,
                "optimization_level": o.optimization_level,
                "workspace_bytes": o.workspace_bytes,
                "timing_cache": None if plan.timing_cache is None else str(plan.timing_cache),
                "plugins": [{"path": str(p), "sha256": em.sha256_file(p)} for p in plan.plugins],
            },
            bundle={
                "target": m.target,
                "precision": m.precision,
                "label": o.label,
                "narrowed": {k: v for k, v in (("max_context", o.max_context), ("max_frames", o.max_frames),
                                               ("max_groups", o.max_groups)) if v is not None},
            },
            engines=entries,
        )
        em.write(meta)
    return dataclasses.replace(meta, root=plan.out)


def find_engines(bundle: Path, module: str, version: str, gpu: Gpu | None) -> Path:
    """The engine directory of `bundle` for this TensorRT (and GPU): the one engines.json that matches; an
    EngineError naming what is there otherwise."""
    root = Path(bundle) / ENGINES_DIR
    found = sorted(p for p in root.glob("*") if (p / em.META).is_file()) if root.is_dir() else []
    if not found:
        raise em.EngineError(
            f"{root}: no engines built for this bundle; build them here with `python -m hulurt.engines {bundle}`"
        )
    matching = []
    for d in found:
        meta = em.read(d)
        try:
            em.check(meta, module=module, version=version, device_cc=gpu.compute_capability if gpu else None,
                     verify_hashes=False, pieces=())
        except em.EngineError:
            continue
        matching.append(d)
    if not matching:
        raise em.EngineError(
            f"{root}: none of {', '.join(p.name for p in found)} was built with {module} {version}"
            + (f" for this GPU ({gpu.name}, {gpu.compute_capability})" if gpu else "")
            + f"; build them here with `python -m hulurt.engines {bundle}`"
        )
    return matching[0]
