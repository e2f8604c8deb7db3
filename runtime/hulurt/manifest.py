"""Strict reader of a bundle's manifest.json: every key known, versions checked, files hashed.

API for the runtime: `m = load_manifest(bundle_dir, verify_hashes=True)` -> `Manifest` (frozen):
  m.root / m.path            bundle directory / its manifest.json
  m.contract_version         == hulurt.contract.CONTRACT_VERSION (other versions are rejected)
  m.precision                "fp32" | "fp16" (act dtype of every graph; see m.pieces[p].compute)
  m.dims                     hulurt.contract.Dims (hidden, vocab, layers, kv_heads, head_dim, ..., act_dtype)
  m.specs()                  hulurt.contract.pieces(m.dims): PieceSpecs to bind(...) feeds against
  m.dim_ranges               {"seq_len": DimRange(min, opt, max), ...}: inputs outside are rejected (m.target)
  m.pieces                   {"vision"|"embed"|"decoder": PieceEntry(file, data, precision, opset, compute)}
  m.piece_path("decoder")    absolute path of decoder.onnx
  m.files                    {relative path: FileEntry(sha256, bytes)}: everything in the bundle but the manifest
  m.tokens                   Tokens(image, endoftext, im_start, im_end, eos, pad)
  m.reduction                Reduction(enabled, threshold, min_tokens, mode)
  m.vision                   VisionInfo(patch, merge_image, merge_video, rope_theta, head_dim, hidden)
  m.preprocess               Preprocess(min_tokens, max_tokens, image_mean, image_std, fps, max_frames)
  m.limits                   Limits(max_context, max_new_tokens_default, max_frames, max_groups)
  m.tokenizer                TokenizerFiles(tokenizer, chat_template, generation_config) (relative or None)
  m.model / m.tools          informational dicts (model config as exported; tool versions)
Errors are hulurt.errors.ManifestError naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hulurt import manifest_limits as limits
from hulurt.contract import CONTRACT_VERSION, DimRange, Dims, PieceSpec, pieces
from hulurt.errors import ContractError, ManifestError

MANIFEST = "manifest.json"
FORMAT = "huluexport-bundle"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16")
ACT_DTYPE = {"fp32": "float32", "fp16": "float16"}
# A piece is at the bundle's precision, or weight-only quantized (`huluexport quantize`: MatMulNBits with
# int8/int4 weights, activations still at the bundle's act dtype; how exactly is in the piece's compute["weights"]).
WEIGHT_ONLY = ("int8", "int4")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class PieceEntry:
    file: str  # relative path of the .onnx graph
    data: str | None  # relative path of its external data file, or None when weights are inline
    precision: str  # the bundle's "fp32" | "fp16", or "int8" | "int4" (weight-only, WEIGHT_ONLY)
    opset: int
    compute: dict[str, str]  # what runs in which dtype: {"matmul": "float16", "norms": "float32", ...}


@dataclass(frozen=True)
class Tokens:
    image: int
    endoftext: int
    im_start: int
    im_end: int
    eos: tuple[int, ...]
    pad: int


@dataclass(frozen=True)
class Reduction:
    enabled: bool
    threshold: float
    min_tokens: int
    mode: str  # "bf16" | "fp32" (hulurt.reduction.MODES)


@dataclass(frozen=True)
class VisionInfo:
    patch: int
    merge_image: int
    merge_video: int
    rope_theta: float
    head_dim: int
    hidden: int


@dataclass(frozen=True)
class Preprocess:
    min_tokens: int
    max_tokens: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    fps: float
    max_frames: int


@dataclass(frozen=True)
class Limits:
    max_context: int  # prompt + generated tokens (== dim_ranges["total_len"].max)
    max_new_tokens_default: int
    max_frames: int  # frames per vision call (== dim_ranges["n_frames"].max)
    max_groups: int  # merged tokens per frame (== dim_ranges["n_groups"].max)


@dataclass(frozen=True)
class TokenizerFiles:
    tokenizer: str | None
    chat_template: str | None
    generation_config: str | None


@dataclass(frozen=True)
class Manifest:
    root: Path
    contract_version: int
    huluexport_version: str
    precision: str
    target: str
    dims: Dims
    dim_ranges: dict[str, DimRange]
    pieces: dict[str, PieceEntry]
    files: dict[str, FileEntry]
    tokens: Tokens
    reduction: Reduction
    vision: VisionInfo
    preprocess: Preprocess
    limits: Limits
    tokenizer: TokenizerFiles
    model: dict[str, Any]
    tools: dict[str, str]

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    def specs(self) -> dict[str, PieceSpec]:
        return pieces(self.dims)

    def piece_path(self, name: str) -> Path:
        if name not in self.pieces:
            raise ManifestError(f"{self.path}: bundle has no piece {name!r}; it has {sorted(self.pieces)}")
        return self.root / self.pieces[name].file

    def file_path(self, rel: str | None) -> Path | None:
        return None if rel is None else self.root / rel


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

_TOP_KEYS = {
    "format", "format_version", "contract_version", "huluexport_version", "precision", "target", "dims",
    "dim_ranges", "pieces", "ops", "files", "tokens", "reduction", "vision", "preprocess", "limits",
    "tokenizer", "model", "tools", "contract",
}


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, message: str) -> ManifestError:
        return ManifestError(f"{self.path}: field {field!r}: {message}")

    def obj(self, value: Any, field: str, keys: set[str] | None, required: set[str] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, found {type(value).__name__}")
        if keys is not None:
            unknown = sorted(set(value) - keys)
            if unknown:
                raise self.fail(
                    f"{field}.{unknown[0]}" if field else unknown[0],
                    f"unknown key (this hulurt knows {sorted(keys)}); rebuild the bundle with a matching "
                    "huluexport or upgrade hulurt",
                )
            need = keys if required is None else required
            missing = sorted(need - set(value))
            if missing:
                raise self.fail(f"{field}.{missing[0]}" if field else missing[0], "missing required key")
        return value

    def typed(self, value: Any, field: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        if value is None and optional:
            return None
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            raise self.fail(field, f"expected {_kind_name(kind)}, found {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(field, f"expected a finite number, found {value}")
        return value

    def dataclass_of(self, cls: type, value: Any, field: str, optional: Collection[str] = frozenset()) -> Any:
        names = {f.name for f in fields(cls)}
        d = self.obj(value, field, names, names - set(optional))
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            v = d.get(f.name)
            t = str(f.type)
            sub = f"{field}.{f.name}"
            if t.startswith("tuple"):
                elem = float if "float" in t else int
                if not isinstance(v, list):
                    raise self.fail(sub, f"expected a list, found {_show(v)}")
                kwargs[f.name] = tuple(self.typed(x, sub, (int, float) if elem is float else int) for x in v)
            elif t == "bool":
                kwargs[f.name] = self.typed(v, sub, bool)
            elif t == "int":
                kwargs[f.name] = self.typed(v, sub, int)
            elif t == "float":
                kwargs[f.name] = float(self.typed(v, sub, (int, float)))
            elif t == "str":
                kwargs[f.name] = self.typed(v, sub, str)
            elif t == "str | None":
                kwargs[f.name] = self.typed(v, sub, str, optional=True)
            elif t.startswith("dict"):
                kwargs[f.name] = dict(self.obj(v, sub, None))
                if t == "dict[str, str]":
                    for k, x in kwargs[f.name].items():
                        self.typed(x, f"{sub}.{k}", str)
            else:  # pragma: no cover - a new field type without a reader
                raise AssertionError(f"no reader for field type {t}")
        return cls(**kwargs)


class _HugeInt:
    """A JSON integer literal too long to be any manifest number (parsed lazily so the error can name its field)."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits)

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def _parse_int(text: str) -> Any:
    return int(text) if len(text) <= 40 else _HugeInt(text)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# A manifest is a few KB (a 7B bundle's: ~10 KB). Anything far larger is not one of ours, and reading it whole
# would be the first allocation a hostile file controls.
MAX_MANIFEST_BYTES = 4 << 20


def inside(root: Path, rel: str | os.PathLike[str], what: str = "file") -> Path:
    """`root / rel` with every symlink resolved; ManifestError naming the file unless it stays inside `root`.

    Every path the runtime, `inspect` and `verify` read from a bundle goes through here: a bundle's files
    (manifest.json, graphs, external data, tokenizer, templates) may not point outside the bundle directory.
    """
    base = Path(root).resolve()
    p = Path(root) / rel
    real = p.resolve()
    if real != base and not real.is_relative_to(base):
        raise ManifestError(f"{p}: this bundle {what} resolves to {real}, outside the bundle directory {base}; "
                            "a bundle may only hold its own files (copy the file in instead of linking it)")
    return real


def check_links(root: str | os.PathLike[str], max_entries: int = 10_000) -> None:
    """Every symbolic link anywhere in the bundle directory must resolve inside it (onnxruntime opens external
    data by the name the graph records, which need not be a listed file)."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*filenames, *dirnames):
            seen += 1
            if seen > max_entries:
                raise ManifestError(f"{root}: holds more than {max_entries} entries; not a huluexport bundle")
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                inside(Path(root), os.path.relpath(full, root))


def read_manifest_json(bundle_dir: str | os.PathLike[str]) -> Any:
    """The parsed manifest.json of `bundle_dir` (not yet validated). ManifestError for a missing, linked-out,
    oversized, undecodable or too deeply nested file."""
    root = Path(bundle_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest.json; {root} is not a huluexport bundle (or its build was "
                            "interrupted). Rebuild it with `huluexport build`.")
    inside(root, MANIFEST)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {size} bytes; a bundle manifest is a few KB (limit {MAX_MANIFEST_BYTES}), "
                            "so this is not one")
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_int=_parse_int)
    except RecursionError:
        raise ManifestError(f"{path}: unreadable JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable JSON ({exc})") from None


def load_manifest(
    bundle_dir: str | os.PathLike[str], verify_hashes: bool = True, hash_limit_bytes: int | None = None
) -> Manifest:
    """Read and strictly validate `bundle_dir/manifest.json`; check every listed file exists with its size.

    Every field is type- and range-checked (hulurt.manifest_limits) before anything is sized from it; every
    file must resolve inside the bundle. verify_hashes: also compare sha256 of each file (files larger than
    `hash_limit_bytes`, when given, are only size-checked: hashing a 15 GB weight file takes a minute).
    Raises ManifestError naming the file and the field.
    """
    root = Path(bundle_dir)
    path = root / MANIFEST
    raw = read_manifest_json(root)
    r = _Reader(path)
    top = r.obj(raw, "", _TOP_KEYS, _TOP_KEYS - {"ops", "contract"})
    if top["format"] != FORMAT:
        raise r.fail("format", f"expected {FORMAT!r}, found {_show(top['format'])}")
    if type(top["format_version"]) is not int or top["format_version"] != FORMAT_VERSION:
        raise r.fail("format_version", f"this hulurt reads version {FORMAT_VERSION}, found "
                     f"{_show(top['format_version'])}; rebuild the bundle or use a matching hulurt")
    if type(top["contract_version"]) is not int or top["contract_version"] != CONTRACT_VERSION:
        raise r.fail("contract_version", f"this hulurt implements contract v{CONTRACT_VERSION}, found "
                     f"{_show(top['contract_version'])}; rebuild the bundle with a matching huluexport")
    precision = r.typed(top["precision"], "precision", str)
    if precision not in PRECISIONS:
        raise r.fail("precision", f"expected one of {PRECISIONS}, found {_show(precision)}")

    dims = r.dataclass_of(Dims, top["dims"], "dims")
    limits.check_dims(r.fail, dims)  # before pieces(dims) builds 2 * layers tensor names
    if dims.act_dtype != ACT_DTYPE[precision]:
        raise r.fail("dims.act_dtype", f"precision {precision} needs {ACT_DTYPE[precision]}, found "
                     f"{dims.act_dtype!r}")
    ranges = {}
    for name, v in r.obj(top["dim_ranges"], "dim_ranges", None).items():
        try:
            ranges[name] = r.dataclass_of(DimRange, v, f"dim_ranges.{name}")
        except ContractError as exc:  # DimRange's own check (min <= opt <= max)
            raise r.fail(f"dim_ranges.{name}", str(exc)) from None
    limits.check_ranges(r.fail, ranges)

    files = {}
    for rel, v in r.obj(top["files"], "files", None).items():
        if not rel or rel.startswith(("/", "\\")) or ".." in Path(rel).parts or rel == MANIFEST:
            raise r.fail(f"files.{rel[:60]}", "file paths must be relative and inside the bundle")
        files[rel] = r.dataclass_of(FileEntry, v, f"files.{rel}")

    known = set(pieces(dims))
    entries = {}
    for name, v in r.obj(top["pieces"], "pieces", None).items():
        if name not in known:
            raise r.fail(f"pieces.{name}", f"unknown piece (contract v{CONTRACT_VERSION} has {sorted(known)})")
        e = r.dataclass_of(PieceEntry, v, f"pieces.{name}")
        if e.precision not in (precision, *WEIGHT_ONLY):
            raise r.fail(f"pieces.{name}.precision", f"expected the bundle's {precision!r} or one of "
                         f"{WEIGHT_ONLY} (weight-only), found {e.precision!r}")
        if e.precision in WEIGHT_ONLY and "weights" not in e.compute:
            raise r.fail(f"pieces.{name}.compute", f"a {e.precision} piece must say how its weights are stored "
                         "in compute['weights']; re-run `huluexport quantize`")
        for rel in (e.file, e.data):
            if rel is not None and rel not in files:
                raise r.fail(f"pieces.{name}", f"refers to {rel!r}, which is not listed under 'files'")
        entries[name] = e

    tok = r.dataclass_of(TokenizerFiles, top["tokenizer"], "tokenizer")
    for key in ("tokenizer", "chat_template", "generation_config"):
        rel = getattr(tok, key)
        if rel is not None and rel not in files:
            raise r.fail(f"tokenizer.{key}", f"refers to {rel!r}, which is not listed under 'files'")
    tools = r.obj(top["tools"], "tools", None)
    m = Manifest(
        root=root,
        contract_version=top["contract_version"],
        huluexport_version=r.typed(top["huluexport_version"], "huluexport_version", str),
        precision=precision,
        target=r.typed(top["target"], "target", str),
        dims=dims,
        dim_ranges=ranges,
        pieces=entries,
        files=files,
        tokens=r.dataclass_of(Tokens, top["tokens"], "tokens"),
        reduction=r.dataclass_of(Reduction, top["reduction"], "reduction"),
        vision=r.dataclass_of(VisionInfo, top["vision"], "vision"),
        preprocess=r.dataclass_of(Preprocess, top["preprocess"], "preprocess"),
        limits=r.dataclass_of(Limits, top["limits"], "limits"),
        tokenizer=tok,
        model=dict(r.obj(top["model"], "model", None)),
        tools={str(k): str(v) for k, v in tools.items()},
    )
    limits.check_values(r.fail, m)
    check_links(root)
    check_files(m, verify_hashes=verify_hashes, hash_limit_bytes=hash_limit_bytes)
    return m


def check_files(m: Manifest, verify_hashes: bool = True, hash_limit_bytes: int | None = None) -> None:
    """Every listed file exists with the recorded size (and sha256 unless skipped)."""
    for rel, entry in m.files.items():
        p = m.root / rel
        inside(m.root, rel)
        if not p.is_file():
            raise ManifestError(f"{p}: listed in {m.path} but missing from the bundle")
        size = p.stat().st_size
        if size != entry.bytes:
            raise ManifestError(
                f"{p}: is {size} bytes, {m.path} records {entry.bytes} (truncated or replaced?); rebuild the "
                "bundle or copy it again"
            )
        if not verify_hashes or (hash_limit_bytes is not None and size > hash_limit_bytes):
            continue
        digest = sha256_file(p)
        if digest != entry.sha256:
            raise ManifestError(
                f"{p}: sha256 {digest[:16]}... does not match {m.path} ({entry.sha256[:16]}...); the file "
                "was modified after the build. Rebuild the bundle."
            )
