"""Which TensorRT module is installed and which GPU this is (name, compute capability), without torch.

The GPU is asked through cuda-python when it is installed, else `nvidia-smi`; None where neither answers (a
CPU-only machine: tensorrt-rtx still builds there, ahead of time)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from hulurt.engines.meta import MODULES, EngineError


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "8.7"


def load_trt(prefer: str | None = None) -> Any:
    """The TensorRT Python module: `prefer` if named, else `tensorrt`, then `tensorrt_rtx`."""
    if prefer is not None and prefer not in MODULES:
        raise EngineError(f"--module {prefer!r}: expected one of {', '.join(MODULES)}")
    names = [prefer] if prefer else ["tensorrt", "tensorrt_rtx"]
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise EngineError(
        f"no TensorRT Python module ({' or '.join(names)}) is installed: JetPack ships `tensorrt`; on x86 install "
        "TensorRT, or `pip install tensorrt-rtx` (RTX GPUs; builds ahead of time on a CPU too)"
    )


def _cuda_python(device_id: int) -> Gpu | None:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]  # older cuda-python layout
        except ImportError:
            return None
    try:
        err, prop = cudart.cudaGetDeviceProperties(device_id)
    except Exception:  # noqa: BLE001  # no driver: cuda-python raises its own error types
        return None
    if int(err) != 0:
        return None
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return Gpu(name, f"{prop.major}.{prop.minor}")


def _nvidia_smi(device_id: int) -> Gpu | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, f"--id={device_id}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    name, _, cc = out.rpartition(",")
    cc = cc.strip()
    if not name or not cc.replace(".", "").isdigit():
        return None
    return Gpu(name.strip(), cc)


def query_gpu(device_id: int = 0) -> Gpu | None:
    """This machine's GPU `device_id`, or None where none can be queried."""
    return _cuda_python(device_id) or _nvidia_smi(device_id)


def parse_sm(text: str) -> str:
    """"sm89", "89", "8.9" -> "8.9"; EngineError otherwise."""
    t = text.strip().lower().removeprefix("sm").removeprefix("_")
    if "." in t:
        major, _, minor = t.partition(".")
    elif t.isdigit() and len(t) >= 2:
        major, minor = t[:-1], t[-1]
    else:
        major = minor = ""
    if not (major.isdigit() and minor.isdigit()):
        raise EngineError(f"--sm {text!r}: expected a compute capability such as sm89, 89 or 8.9")
    return f"{int(major)}.{int(minor)}"


def rtx_capability(trt: Any, cc: str) -> Any:
    """tensorrt_rtx's ComputeCapability member for "8.9" (SM89); EngineError listing what this version offers."""
    member = "SM" + cc.replace(".", "")
    offered = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
    if member not in offered:
        raise EngineError(
            f"--sm {cc}: {trt.__name__} {trt.__version__} builds for {', '.join(offered)} (compute capabilities), "
            f"not {member}"
        )
    return trt.ComputeCapability.__members__[member]


def rtx_runs_on(trt: Any, cc: str) -> None:
    """EngineError unless tensorrt_rtx can target a GPU of compute capability `cc` (its ComputeCapability
    members: RTX/GeForce architectures; 1.7.1 has no SM87 (Orin) and no SM90 (H100/H200)). Such a GPU passes
    engines.json's portable check (8.0 and later) and would only fail inside TensorRT-RTX."""
    offered = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
    if "SM" + cc.replace(".", "") not in offered:
        raise EngineError(
            f"this GPU is compute capability {cc}; {trt.__name__} {trt.__version__} runs on "
            f"{', '.join(offered)} only: install TensorRT (`tensorrt`) and build engines on this GPU with "
            "`python -m hulurt.engines BUNDLE --module tensorrt`, or use --provider cuda"
        )
