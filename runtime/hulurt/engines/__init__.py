"""TensorRT engines of a bundle, built where they run (no torch, no onnx): `python -m hulurt.engines BUNDLE`.

    build.py     BuildOptions -> plan_build (profiles, device, paths) -> build_engines (staged, engines.json last)
    profiles.py  min/opt/max shapes from the manifest's dim ranges; profile selection for given feed shapes
    meta.py      engines.json: written beside the engines, read and checked before any engine is deserialised
    device.py    which TensorRT module is installed, which GPU this is (cuda-python or nvidia-smi)
    trtexec.py   the equivalent trtexec command lines (--print-trtexec)
    staging.py   a directory written whole or not at all
Works with `tensorrt` (on the GPU the engines are for) and `tensorrt_rtx` (also ahead of time on a CPU) alike.
"""

from __future__ import annotations

from hulurt.engines.meta import EngineError, EngineMeta

__all__ = ["EngineError", "EngineMeta", "main"]


def main(argv: list[str] | None = None) -> int:
    """`hulurt engines ...` (hulurt/cli.py SUBCOMMANDS) and `python -m hulurt.engines ...`."""
    from hulurt.engines.__main__ import main as cli_main

    return cli_main(argv)
