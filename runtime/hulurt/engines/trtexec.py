"""`--print-trtexec`: the trtexec command lines equivalent to a BuildPlan, for people who build engines with
JetPack's own tools (`/usr/src/tensorrt/bin/trtexec` on a Jetson). trtexec builds for the GPU it runs on, so
a plan for tensorrt_rtx compute-capability targets prints a comment saying so instead of a flag."""

from __future__ import annotations

import shlex

from hulurt.engines.build import BuildPlan
from hulurt.engines.profiles import Profile


def _shapes(plan_profile: Profile, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in plan_profile.items())


def command_lines(plan: BuildPlan, tool: str | None = None) -> list[str]:
    tool = tool or "trtexec"
    o = plan.options
    lines = []
    if plan.module == "tensorrt_rtx" and plan.compute_capabilities:
        lines.append(f"# trtexec builds for the GPU it runs on; this plan targets compute capability "
                     f"{', '.join(plan.compute_capabilities)}: run the lines on such a GPU")
    for pp in plan.pieces:
        args = [
            tool,
            f"--onnx={pp.onnx}",
            f"--saveEngine={plan.out / pp.plan_file}",
            "--stronglyTyped",
            f"--minShapes={_shapes(pp.profile, 0)}",
            f"--optShapes={_shapes(pp.profile, 1)}",
            f"--maxShapes={_shapes(pp.profile, 2)}",
            f"--builderOptimizationLevel={o.optimization_level}",
        ]
        if o.workspace_bytes is not None:
            args.append(f"--memPoolSize=workspace:{max(1, o.workspace_bytes // 2**20)}M")
        if plan.timing_cache is not None:
            args.append(f"--timingCacheFile={plan.timing_cache}")
        args += [f"--staticPlugins={p}" for p in plan.plugins]
        lines.append(" ".join(shlex.quote(a) for a in args))
    return lines
