"""ONNX -> TensorRT: parse every graph of a bundle and build a strongly typed engine with one optimization profile
per bundle, min/opt/max taken from the contract's dim ranges (the manifest's target). Works with `tensorrt-rtx`
(builds ahead of time on the CPU) and, for engines on a GPU host, with `tensorrt` (same public API).
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hulurt import manifest as rt
from hulurt.contract import DERIVED_DIMS, DimRange, PieceSpec

from huluexport.errors import ExportError

log = logging.getLogger(__name__)

MODULES = ("tensorrt_rtx", "tensorrt")


@dataclass(frozen=True)
class EngineResult:
    piece: str
    module: str
    version: str
    seconds: float
    engine_bytes: int
    plan: Path | None


def load_trt(prefer: str | None = None) -> Any:
    for name in [prefer] if prefer else list(MODULES):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ExportError(
        "no TensorRT Python package found: install the 'trt' extra (pip install 'huluexport[trt]', which brings "
        "tensorrt-rtx) or use the system TensorRT"
    )


def profile_shapes(spec: PieceSpec, ranges: dict[str, DimRange]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) shapes. Derived dims follow their operands (n_patches = n_groups*merge_group,
    total_len = past_len + seq_len) so every profile point is a consistent feed."""
    out = {}
    for ts in spec.inputs:
        triple = []
        for which in ("min", "opt", "max"):
            pick = {name: getattr(r, which) for name, r in ranges.items()}
            for d, (kind, (a, b)) in DERIVED_DIMS.items():
                if a in pick and b in pick:
                    pick[d] = pick[a] * pick[b] if kind == "mul" else pick[a] + pick[b]
            shape = []
            for dim in ts.shape:
                if isinstance(dim, int):
                    shape.append(dim)
                elif dim not in pick:
                    raise ExportError(
                        f"{spec.name}: no range for dim {dim!r} of input {ts.name!r} in the manifest"
                    )
                else:
                    shape.append(pick[dim])
            triple.append(tuple(shape))
        out[ts.name] = tuple(triple)
    return out


def build_engine(
    onnx_path: Path, spec: PieceSpec, ranges: dict[str, DimRange], trt: Any, plan_out: Path | None = None
) -> EngineResult:
    """Parse `onnx_path` and build a strongly typed engine; raise ExportError naming the file on any failure."""
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT ({trt.__name__} {trt.__version__}) cannot parse it: {errs}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec, ranges).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"{onnx_path}: TensorRT ({trt.__name__} {trt.__version__}) parsed it but the engine build "
            "failed (run with -v for the builder log)"
        )
    size = serialized.nbytes
    if plan_out is not None:
        plan_out.parent.mkdir(parents=True, exist_ok=True)
        plan_out.write_bytes(memoryview(serialized))
    dt = time.perf_counter() - t0
    log.info("tensorrt: %s built (%d bytes) in %.1f s", onnx_path.name, size, dt)
    return EngineResult(spec.name, trt.__name__, trt.__version__, dt, size, plan_out)


def check_bundle(
    bundle: str | Path,
    pieces: tuple[str, ...] = ("vision", "embed", "decoder"),
    engines_dir: Path | None = None,
    prefer: str | None = None,
) -> list[EngineResult]:
    """The compatibility check: every graph of the bundle parses and builds with profiles from its dim ranges."""
    m = rt.load_manifest(bundle, verify_hashes=False)
    trt = load_trt(prefer)
    specs = m.specs()
    results = []
    for name in pieces:
        plan = None if engines_dir is None else engines_dir / f"{name}.plan"
        results.append(build_engine(m.piece_path(name), specs[name], m.dim_ranges, trt, plan))
    return results
