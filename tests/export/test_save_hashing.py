"""The build's save and hash phases (huluexport/export/hashing.py, huluexport/checkpoint/shards.py): the same
bundle bytes as a plain serial ir.save, and manifest hashes equal to a separate full read of every file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx_ir as ir
import pytest
import torch
from hulurt import manifest as rt
from safetensors import safe_open

from huluexport.checkpoint import weight_files
from huluexport.checkpoint.hub import file_hashes
from huluexport.checkpoint.shards import ShardReader
from huluexport.errors import ExportError
from huluexport.export import pipeline
from huluexport.export.hashing import FollowingHash
from huluexport.export.manifest import checked_files
from huluexport.export.pipeline import BuildOptions, build


def _old_save(model: ir.Model, path: Path, data: str, **kwargs) -> dict[str, rt.FileEntry]:
    """The save before the change: one tensor at a time, then every file hashed in a separate read."""
    kwargs.update(max_workers=1, max_in_flight_bytes=256 << 20)
    ir.save(model, path, external_data=data, **kwargs)
    files = [path] + ([path.parent / data] if (path.parent / data).exists() else [])
    return {f.name: rt.FileEntry(sha256=rt.sha256_file(f), bytes=f.stat().st_size) for f in files}


def test_bundle_bytes_equal_serial_save(
    bundle_factory, ckpt_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 checkpoint -> fp16 bundle (a cast per tensor): every file byte-equal to the serial save's."""
    new = bundle_factory("qwen2", "fp16")
    monkeypatch.setattr(pipeline, "save_hashed", _old_save)
    old = build(BuildOptions(out=tmp_path / "old", checkpoint=ckpt_qwen2, precision="fp16", target="tiny"))
    names = sorted(p.name for p in new.iterdir())
    assert names == sorted(p.name for p in old.iterdir())
    assert {"decoder.onnx.data", "embed.onnx.data", "vision.onnx.data"} <= set(names)
    for n in names:
        if n != rt.MANIFEST:
            assert (new / n).read_bytes() == (old / n).read_bytes(), n
    m_new, m_old = (json.loads((d / rt.MANIFEST).read_text()) for d in (new, old))
    assert m_new["files"] == m_old["files"]
    assert m_new["model"]["weights"] == m_old["model"]["weights"]


def test_manifest_hashes_equal_full_read(bundle_factory, ckpt_qwen2: Path) -> None:
    b = bundle_factory("qwen2", "fp16")
    m = json.loads((b / rt.MANIFEST).read_text())
    on_disk = sorted(p.name for p in b.iterdir() if p.name != rt.MANIFEST)
    assert sorted(m["files"]) == on_disk  # every file listed, nothing else
    for name, entry in m["files"].items():
        assert entry == {"sha256": rt.sha256_file(b / name), "bytes": (b / name).stat().st_size}, name
    assert m["model"]["weights"]["files"] == file_hashes(ckpt_qwen2)


def test_checked_files_names_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"x")
    (tmp_path / "b.json").write_bytes(b"yy")
    entry = rt.FileEntry(sha256="0" * 64, bytes=1)
    with pytest.raises(ExportError, match=r"not hashed \['b.json'\]"):
        checked_files(tmp_path, {"a.onnx": entry})
    with pytest.raises(ExportError, match=r"hashed but absent \['c'\]"):
        checked_files(tmp_path, {"a.onnx": entry, "b.json": rt.FileEntry("0" * 64, 2), "c": entry})
    with pytest.raises(ExportError, match="2 bytes on disk; 1 when it was hashed"):
        checked_files(tmp_path, {"a.onnx": entry, "b.json": entry})


def test_following_hash_out_of_order_and_gaps(tmp_path: Path) -> None:
    """Ranges reported out of order, one never reported (the finish reads it): the digest of the whole file."""
    path = tmp_path / "data"
    blobs = [os.urandom(n) for n in (5000, 1, 300_000, 77, 9_000_000)]
    starts = [sum(len(b) for b in blobs[:i]) for i in range(len(blobs))]
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, starts[-1] + len(blobs[-1]))
    follower = FollowingHash()
    for i in (4, 0, 2, 3):  # blob 1 is written but never reported
        os.pwrite(fd, blobs[i], starts[i])
        follower.written(str(path), starts[i], starts[i] + len(blobs[i]))
    os.pwrite(fd, blobs[1], starts[1])
    os.close(fd)
    got = follower.finish(path)
    assert got == rt.FileEntry(hashlib.sha256(b"".join(blobs)).hexdigest(), sum(len(b) for b in blobs))


def test_shard_reader_equals_safe_open(ckpt_qwen2: Path) -> None:
    _, files = weight_files(ckpt_qwen2)
    reader = ShardReader(max_open=1)  # every change of shard evicts the previous mapping
    kept = []
    for name, path in files.items():
        with safe_open(str(path), framework="pt") as f:
            want = f.get_tensor(name)
        for dtype in (None, torch.float16, torch.float32, torch.bfloat16):
            got = reader.read(path, name, dtype)
            assert got.dtype == (dtype or want.dtype) and torch.equal(got, want.to(got.dtype)), (name, dtype)
            kept.append(got)
    for t in kept:  # tensors own their memory: still readable with every mapping closed or evicted
        assert torch.isfinite(t.float()).all()
