"""Which tensors a checkpoint holds, where, with which shape: read from headers only, without torch.

safetensors files: the header via the safetensors library (which checks offsets against the file).
PyTorch `.bin` files (torch.save zip archives): `data.pkl` is read by an unpickler that knows only the
handful of globals a state dict uses and turns each tensor into a (shape, dtype) record; nothing else is
constructed, no code from the file runs, no tensor data is read.

Every file reached through an index, or found by name, must resolve inside the checkpoint directory
(huluexport.checkpoint.paths).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huluexport.checkpoint.jsonfile import read_json
from huluexport.checkpoint.layout import parameter_shapes
from huluexport.checkpoint.names import LM_HEAD, checkpoint_name, normalize_name, reference_name
from huluexport.checkpoint.paths import inside, root_of
from huluexport.config import HuluConfig
from huluexport.errors import CheckpointError

log = logging.getLogger(__name__)

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_PICKLE_BYTES = 64 << 20  # a state dict's data.pkl holds names and shapes only (a 7B: ~100 KB)


@dataclass(frozen=True)
class TensorEntry:
    canonical: str  # HF-version checkpoint name
    stored: str  # the name inside the file
    file: Path  # as listed (checkpoint dir / name); checked to resolve inside the checkpoint directory
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F32, BF16, F16, ...


# --------------------------------------------------------------------------------------------------
# One file's header
# --------------------------------------------------------------------------------------------------


def file_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of one weight file, from its header only."""
    if path.suffix == ".safetensors":
        return _safetensors_header(path)
    return _bin_header(path)


def _safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for name in list(f.keys()):
                sl = f.get_slice(name)
                out[name] = (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:  # a corrupt or lying header, an unreadable file
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})", file=path) from None


# torch.save's storage classes -> safetensors dtype names
_STORAGES = {
    "FloatStorage": "F32",
    "BFloat16Storage": "BF16",
    "HalfStorage": "F16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class _Storage:
    dtype: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    shape: tuple[int, ...]
    dtype: str


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _Tensor:
    if not isinstance(storage, _Storage) or not isinstance(size, tuple):
        raise pickle.UnpicklingError("malformed tensor record")
    shape = tuple(int(s) for s in size)
    extent = 1 + sum((s - 1) * int(st) for s, st in zip(shape, stride)) if all(shape) else 0
    if int(offset) < 0 or any(s < 0 for s in shape) or int(offset) + extent > storage.numel:
        raise pickle.UnpicklingError(f"tensor of shape {list(shape)} lies outside its storage")
    return _Tensor(shape, storage.dtype)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


class _HeaderUnpickler(pickle.Unpickler):
    """Understands the globals of a saved state dict and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a state dict")

    def persistent_load(self, pid: Any) -> Any:
        if not (
            isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _STORAGES.values()
        ):
            raise pickle.UnpicklingError("unknown persistent id")
        return _Storage(pid[1], int(pid[4]))


def _bin_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [i for i in z.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pkl) != 1:
                raise CheckpointError(
                    f"{path}: not a torch.save zip archive (expected one data.pkl, found {len(pkl)})",
                    file=path,
                )
            if pkl[0].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"{path}: data.pkl is {pkl[0].file_size} bytes; a state dict's is far smaller", file=path
                )
            with z.open(pkl[0]) as f:
                sd = _HeaderUnpickler(f).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(
            f"{path}: not a readable PyTorch weight file (expected a torch.save zip archive)", file=path
        ) from None
    except Exception as exc:  # noqa: BLE001 - a hostile data.pkl can make the opcodes raise any error type
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({exc})", file=path) from None
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, _Tensor) for k, v in sd.items()
    ):
        raise CheckpointError(f"{path}: expected a state dict of named tensors", file=path)
    return {k: (v.shape, v.dtype) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------
# The directory
# --------------------------------------------------------------------------------------------------


def weight_files(ckpt_dir: str | Path) -> tuple[Path | None, dict[str, Path]]:
    """(index file or None, stored name -> file). Follows the index's weight_map; never guesses shards."""
    d = root_of(ckpt_dir)
    for index_name in INDEX_FILES:
        if (d / index_name).exists() or (d / index_name).is_symlink():
            inside(d, index_name)
            index = d / index_name
            data = read_json(index, "weight index")
            wm = data.get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise CheckpointError(f"{index}: expected a non-empty 'weight_map' object", file=index)
            files: dict[str, Path] = {}
            for name, fname in wm.items():
                if not isinstance(fname, str) or not fname:
                    raise CheckpointError(
                        f"{index}: weight_map entry {name!r} must name a file; found {fname!r}",
                        file=index,
                        tensor=name,
                    )
                inside(d, fname, named_by=index, entry=name)
                f = d / fname  # the listed name (its suffix says the format; Hub blobs have none)
                if not f.is_file():
                    raise CheckpointError(
                        f"{index}: shard {fname} listed for tensor {name!r} does not exist in {d}",
                        file=f,
                        tensor=name,
                    )
                files[name] = f
            return index, files
    for single in SINGLE_FILES:
        if (d / single).exists() or (d / single).is_symlink():
            inside(d, single)
            f = d / single
            return None, {name: f for name in file_tensors(f)}
    bins = sorted(d.glob("pytorch_model*.bin"))
    if bins:
        found: dict[str, Path] = {}
        for b in bins:
            inside(d, b.name)
            found.update({name: b for name in file_tensors(b)})
        return None, found
    raise CheckpointError(
        f"{d}: no weights found; expected one of {', '.join(INDEX_FILES + SINGLE_FILES)}", file=d
    )


def scan(ckpt_dir: str | Path) -> dict[str, TensorEntry]:
    """canonical name -> TensorEntry for every tensor (shapes from the headers; no data is read)."""
    index, files = weight_files(ckpt_dir)
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    entries: dict[str, TensorEntry] = {}
    for f, names in by_file.items():
        header = file_tensors(f)
        for stored in names:
            if stored not in header:
                raise CheckpointError(
                    f"{f}: tensor {stored!r} is listed in {index.name if index else 'the index'} "
                    "but missing from the file",
                    file=f,
                    tensor=stored,
                )
            canonical = normalize_name(stored)
            if canonical in entries:
                raise CheckpointError(
                    f"{f}: tensor {stored!r} duplicates {entries[canonical].stored!r} "
                    "after prefix normalisation",
                    file=f,
                    tensor=stored,
                )
            shape, dtype = header[stored]
            entries[canonical] = TensorEntry(canonical, stored, f, shape, dtype)
    return entries


@dataclass(frozen=True)
class CheckpointPlan:
    """What will be loaded: reference name -> entry, and whether lm_head reuses the embedding (tied)."""

    entries: dict[str, TensorEntry]
    tie_lm_head: bool
    source: Path  # the index file, or the single weight file


def plan(ckpt_dir: str | Path, cfg: HuluConfig) -> CheckpointPlan:
    """Validate every name and shape against cfg before any tensor data is read."""
    index, _ = weight_files(ckpt_dir)
    found = scan(ckpt_dir)
    expected = parameter_shapes(cfg)
    by_ref: dict[str, TensorEntry] = {}
    for canonical, e in found.items():
        ref = reference_name(canonical)
        if ref is None or ref not in expected:
            raise CheckpointError(
                f"{e.file}: unexpected tensor {e.stored!r} "
                f"(no such parameter in a {cfg.decoder.flavor} Hulu-Med "
                f"with {cfg.decoder.layers} decoder / {cfg.vision.layers} vision layers)",
                file=e.file,
                tensor=e.stored,
            )
        if e.shape != expected[ref]:
            raise CheckpointError(
                f"{e.file}: tensor {e.stored!r} has shape {list(e.shape)}; "
                f"config.json implies {list(expected[ref])}",
                file=e.file,
                tensor=e.stored,
            )
        by_ref[ref] = e
    source = index if index is not None else next(iter(found.values())).file
    tie = False
    if LM_HEAD not in by_ref:  # a stored lm_head wins; absent + tie flag -> reuse the embedding
        if cfg.decoder.tie_embeddings:
            tie = True
        else:
            raise CheckpointError(
                f"{source}: tensor 'lm_head.weight' is missing and config.json has tie_word_embeddings=false",
                file=source,
                tensor="lm_head.weight",
            )
    elif cfg.decoder.tie_embeddings:
        log.info("lm_head.weight is stored although tie_word_embeddings=true; using the stored tensor")
    missing = [r for r in expected if r not in by_ref and not (tie and r == LM_HEAD)]
    if missing:
        names = [checkpoint_name(r) for r in missing]
        raise CheckpointError(
            f"{source}: {len(missing)} tensor(s) missing, first {names[0]!r}"
            + (f" (also {', '.join(names[1:4])}{'...' if len(names) > 4 else ''})" if len(names) > 1 else ""),
            file=source,
            tensor=names[0],
        )
    return CheckpointPlan(by_ref, tie, source)
