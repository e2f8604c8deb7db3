"""`huluexport trt-check` / `build --trt-check`: a thin use of hulurt.engines (the engine builder that runs on the
device, without torch): parse every graph of a bundle and build its engine with the profile from the manifest's
dim ranges, keeping the engines only when asked. `huluexport engines` calls hulurt.engines.build directly."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hulurt.engines.build import BuildOptions, build_engines, build_piece, plan_build
from hulurt.engines.device import load_trt
from hulurt.engines.profiles import profile_shapes
from hulurt.errors import HuluRuntimeError

from huluexport import progress
from huluexport.errors import ExportError

log = logging.getLogger(__name__)

__all__ = ["EngineResult", "build_engine", "check_bundle", "profile_shapes"]


@dataclass(frozen=True)
class EngineResult:
    piece: str
    module: str
    version: str
    seconds: float
    engine_bytes: int
    plan: Path | None


def check_bundle(
    bundle: str | Path,
    pieces: tuple[str, ...] = ("vision", "embed", "decoder"),
    engines_dir: Path | None = None,
    prefer: str | None = None,
) -> list[EngineResult]:
    """The compatibility check: every graph of the bundle parses and builds with profiles from its dim ranges
    (with `tensorrt` where installed, else tensorrt-rtx, which builds on a CPU). With `engines_dir` the engines
    and their engines.json are kept there (replacing an engine directory written before)."""
    try:
        trt = load_trt(prefer)
        opts = BuildOptions(bundle=Path(bundle), out=engines_dir, pieces=tuple(pieces), module=prefer,
                            overwrite=True)
        if engines_dir is not None:
            meta = build_engines(opts, trt, phase=progress.phase)
            return [
                EngineResult(p, meta.module, meta.version, e.build_seconds, e.bytes, meta.root / e.file)
                for p, e in meta.engines.items()
            ]
        plan = plan_build(opts, trt)
        results = []
        for pp in plan.pieces:
            with progress.phase(f"{pp.piece}: {plan.module} engine"):
                engine, _, seconds = build_piece(trt, plan, pp, b"")
            results.append(EngineResult(pp.piece, plan.module, plan.version, seconds, engine.nbytes, None))
        return results
    except HuluRuntimeError as exc:
        raise ExportError(str(exc)) from None


def build_engine(onnx_path: Path, spec, ranges, trt, plan_out: Path | None = None) -> EngineResult:
    """One graph that is not a bundle piece (e.g. the token-reduction graph): parse and build it strongly typed
    with the profile of `spec` under `ranges`, through the same builder as hulurt.engines; keep it at plan_out."""
    import dataclasses
    import types

    from hulurt.engines.build import BuildOptions, BuildPlan, PiecePlan

    pp = PiecePlan(spec.name, Path(onnx_path), f"{spec.name}.plan", profile_shapes(spec, ranges), "", ())
    opts = BuildOptions(bundle=Path(onnx_path).parent)
    plan = BuildPlan(trt.__name__, trt.__version__, "portable", (), True, Path(onnx_path).parent, None, (),
                     (pp,), opts, types.SimpleNamespace())  # type: ignore[arg-type]
    try:
        engine, _, seconds = build_piece(trt, dataclasses.replace(plan), pp, b"")
    except HuluRuntimeError as exc:
        raise ExportError(str(exc)) from None
    if plan_out is not None:
        plan_out.parent.mkdir(parents=True, exist_ok=True)
        plan_out.write_bytes(engine)
    return EngineResult(spec.name, plan.module, plan.version, seconds, engine.nbytes, plan_out)
