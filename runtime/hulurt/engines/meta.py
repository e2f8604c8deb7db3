"""engines.json: what a directory of TensorRT engines was built with, checked before anything is deserialised.

A deserialised engine from another TensorRT version or another GPU crashes or fails deep inside TensorRT; the
runtime reads this file first and refuses with one line naming the file (EngineError). Layout:

    {"format": "hulurt-engines", "format_version": 1,
     "module": "tensorrt_rtx" | "tensorrt", "version": "1.7.1.116",
     "device": {"name": "portable" | "sm89" | "<GPU name>", "compute_capabilities": ["8.9"], "portable": bool},
     "builder": {"strongly_typed": true, "optimization_level": 3, "workspace_bytes": null | N,
                 "timing_cache": null | "path", "plugins": [{"path": ..., "sha256": ...}]},
     "bundle": {"target": ..., "precision": ..., "profile_target": ...},
     "engines": {"decoder": {"file": "decoder.plan", "bytes": N, "sha256": "...", "onnx": "decoder.onnx",
                             "onnx_sha256": "...", "precision": "fp16", "build_seconds": 2.1,
                             "profiles": [{"inputs_embeds": {"min": [...], "opt": [...], "max": [...]}, ...}]}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hulurt.engines.profiles import Profile
from hulurt.errors import HuluRuntimeError

META = "engines.json"
FORMAT = "hulurt-engines"
FORMAT_VERSION = 1
MODULES = ("tensorrt", "tensorrt_rtx")
# TensorRT-RTX engines built without a target compute capability: its support matrix (1.0-1.5) says "portable
# across devices with compute capabilities 8.6, 8.9, and 12.0". This check is the looser "8.0 and later"; a GPU
# tensorrt_rtx cannot target at all (9.0 H100/H200, 8.7 Orin: no such ComputeCapability member) is refused by
# hulurt.engines.device.rtx_runs_on where the module is at hand (the native backend, --check).
RTX_PORTABLE_MIN = (8, 0)


class EngineError(HuluRuntimeError):
    """Engines that are missing, modified, or built for another TensorRT version or GPU."""


@dataclass(frozen=True)
class EngineEntry:
    piece: str
    file: str
    bytes: int
    sha256: str
    onnx: str
    onnx_sha256: str
    precision: str
    build_seconds: float
    profiles: list[Profile]


@dataclass(frozen=True)
class EngineMeta:
    root: Path
    module: str
    version: str
    device_name: str
    compute_capabilities: tuple[str, ...]
    portable: bool
    builder: dict[str, Any]
    bundle: dict[str, Any]
    engines: dict[str, EngineEntry] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / META

    def engine_path(self, piece: str) -> Path:
        if piece not in self.engines:
            raise EngineError(f"{self.path}: no engine for piece {piece!r}; it lists {sorted(self.engines)}")
        return self.root / self.engines[piece].file


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def dir_name(device_name: str, module: str, version: str) -> str:
    """engines/<gpu or target>-<module><version>, e.g. portable-tensorrt_rtx1.7.1.116, orin-tensorrt10.3.0."""
    slug = re.sub(r"[^a-z0-9.]+", "-", device_name.lower()).strip("-") or "device"
    return f"{slug}-{module}{version}"


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def to_json(meta: EngineMeta) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "module": meta.module,
        "version": meta.version,
        "device": {
            "name": meta.device_name,
            "compute_capabilities": list(meta.compute_capabilities),
            "portable": meta.portable,
        },
        "builder": meta.builder,
        "bundle": meta.bundle,
        "engines": {
            p: {
                "file": e.file,
                "bytes": e.bytes,
                "sha256": e.sha256,
                "onnx": e.onnx,
                "onnx_sha256": e.onnx_sha256,
                "precision": e.precision,
                "build_seconds": round(e.build_seconds, 3),
                "profiles": [
                    {n: {"min": list(t[0]), "opt": list(t[1]), "max": list(t[2])} for n, t in prof.items()}
                    for prof in e.profiles
                ],
            }
            for p, e in meta.engines.items()
        },
    }


def write(meta: EngineMeta) -> Path:
    """Write engines.json (to a temporary name first, then renamed: a reader never sees half a file)."""
    tmp = meta.path.with_name(f".{META}.tmp")
    tmp.write_text(json.dumps(to_json(meta), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta.path)
    return meta.path


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise EngineError(f"{where}: field {key!r} is missing; rebuild the engines (python -m hulurt.engines BUNDLE)")
    val = obj[key]
    if not isinstance(val, kind) or isinstance(val, bool) and kind in (int, (int, float)):
        raise EngineError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}, found {val!r}")
    return val


def read(root: str | os.PathLike[str]) -> EngineMeta:
    """Parse `root`/engines.json strictly (no engine is opened here)."""
    root = Path(root)
    path = root / META
    if not path.is_file():
        raise EngineError(
            f"{path}: not found; build engines with `python -m hulurt.engines BUNDLE` (or `huluexport engines`)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else raw
        raise EngineError(f"{path}: not an engines file (format {found!r}, expected {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path}: format_version {raw.get('format_version')!r}; this hulurt reads {FORMAT_VERSION}")
    module = _need(raw, "module", str, path)
    if module not in MODULES:
        raise EngineError(f"{path}: module {module!r}; expected one of {', '.join(MODULES)}")
    dev = _need(raw, "device", dict, path)
    engines: dict[str, EngineEntry] = {}
    for piece, e in _need(raw, "engines", dict, path).items():
        profiles: list[Profile] = []
        for prof in _need(e, "profiles", list, path):
            if not isinstance(prof, dict):
                raise EngineError(f"{path}: engines.{piece}.profiles holds {prof!r}, expected an object")
            profiles.append(
                {n: (tuple(t["min"]), tuple(t["opt"]), tuple(t["max"])) for n, t in prof.items()}  # type: ignore[misc]
            )
        file = _need(e, "file", str, path)
        if Path(file).name != file or file in ("", ".", ".."):
            raise EngineError(f"{path}: engines.{piece}.file {file!r} must be a plain file name in this directory")
        engines[piece] = EngineEntry(
            piece=piece,
            file=file,
            bytes=_need(e, "bytes", int, path),
            sha256=_need(e, "sha256", str, path),
            onnx=_need(e, "onnx", str, path),
            onnx_sha256=_need(e, "onnx_sha256", str, path),
            precision=_need(e, "precision", str, path),
            build_seconds=float(_need(e, "build_seconds", (int, float), path)),
            profiles=profiles,
        )
    return EngineMeta(
        root=root,
        module=module,
        version=_need(raw, "version", str, path),
        device_name=_need(dev, "name", str, path),
        compute_capabilities=tuple(_need(dev, "compute_capabilities", list, path)),
        portable=bool(dev.get("portable", False)),
        builder=_need(raw, "builder", dict, path),
        bundle=_need(raw, "bundle", dict, path),
        engines=engines,
    )


def check(
    meta: EngineMeta,
    *,
    module: str,
    version: str,
    device_cc: str | None,
    pieces: tuple[str, ...] | None = None,
    verify_hashes: bool = True,
    onnx_sha256: dict[str, str] | None = None,
) -> None:
    """Refuse (EngineError, one line naming the file) engines this machine cannot or must not deserialise:
    another TensorRT module or version, a GPU the engines were not built for (`device_cc` "8.7"; None when no
    GPU can be queried: that check is then left to TensorRT), a modified or truncated engine file (size and
    sha256), or engines built from other graphs than the bundle's (`onnx_sha256`: piece -> the manifest's)."""
    if (meta.module, meta.version) != (module, version):
        raise EngineError(
            f"{meta.path}: engines built with {meta.module} {meta.version}, this machine has {module} {version}; "
            "TensorRT engines load only with the exact version that built them: rebuild them here with "
            "`python -m hulurt.engines BUNDLE`"
        )
    if device_cc is not None:
        have = cc_tuple(device_cc)
        ok = have >= RTX_PORTABLE_MIN if meta.portable else any(cc_tuple(c) == have for c in meta.compute_capabilities)
        if not ok:
            built = "portable (8.0 and later)" if meta.portable else ", ".join(meta.compute_capabilities)
            raise EngineError(
                f"{meta.path}: engines built for {meta.device_name} (compute capability {built}), this GPU is "
                f"compute capability {device_cc}; rebuild them on this device with `python -m hulurt.engines BUNDLE`"
            )
    for piece in pieces if pieces is not None else tuple(meta.engines):
        e = meta.engines.get(piece)
        if e is None:
            raise EngineError(f"{meta.path}: no engine for piece {piece!r}; it lists {sorted(meta.engines)}")
        f = meta.root / e.file
        if not f.is_file():
            raise EngineError(f"{f}: engine file listed in {META} is missing")
        size = f.stat().st_size
        if size != e.bytes:
            raise EngineError(f"{f}: {size} bytes, {META} says {e.bytes}; the engine was modified or truncated")
        if verify_hashes:
            got = sha256_file(f)
            if got != e.sha256:
                raise EngineError(
                    f"{f}: sha256 {got[:16]}... does not match {META} ({e.sha256[:16]}...); the engine was "
                    "modified: rebuild it"
                )
        if onnx_sha256 is not None and piece in onnx_sha256 and onnx_sha256[piece] != e.onnx_sha256:
            raise EngineError(
                f"{f}: built from another {e.onnx} (sha256 {e.onnx_sha256[:16]}...) than this bundle's "
                f"({onnx_sha256[piece][:16]}...); rebuild the engines from this bundle"
            )
