"""Issue 14 item 2: `huluexport quantize` reads only hash-checked files inside the source bundle. An external-data
location pointing outside, flipped weight bytes, and side files linked to outside copies are each refused with
exit 2 and one line naming the file; the outside files are never read and nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from e2e.hostile import Sentinel, resign, snapshot
from stderr_lines import error_lines

from huluexport.cli import main


def _cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.fixture()
def job(tmp_path: Path, bundle_factory) -> Path:
    shutil.copytree(bundle_factory("qwen2", "fp32"), tmp_path / "job" / "bundle")
    return tmp_path / "job"


def _refused(capsys, job: Path, sentinel: Sentinel | None, *extra: str) -> str:
    before = snapshot(job.parent)
    if sentinel is not None:
        sentinel.reset()  # the snapshot read it
    bits = ("--bits", "4") if extra else ("--bits", "8")
    code, err = _cli(capsys, "quantize", str(job / "bundle"), "--out", str(job / "q"), *bits, *extra)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    if sentinel is not None:
        assert sentinel.untouched(), f"{sentinel.path} outside the bundle was read"
    assert snapshot(job.parent) == before and not (job / "q").exists()
    return lines[0]


@pytest.mark.parametrize("extra", [(), ("--format", "qdq")], ids=["matmulnbits", "qdq"])
def test_external_data_outside_the_bundle_is_refused(job: Path, capsys, extra: tuple[str, ...]) -> None:
    b = job / "bundle"
    outside = Sentinel(job.parent / "outside" / "decoder.onnx.data", (b / "decoder.onnx.data").read_bytes())
    model = onnx.load(str(b / "decoder.onnx"), load_external_data=False)
    t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for e in t.external_data:
        if e.key == "location":
            e.value = "../../outside/decoder.onnx.data"
    onnx.save(model, str(b / "decoder.onnx"))
    resign(b)  # hashes fresh: only the location check can stop it
    line = _refused(capsys, job, outside, *extra)
    assert "decoder.onnx: tensor" in line and "'../../outside/decoder.onnx.data'" in line


def test_unlisted_external_data_inside_the_bundle_is_refused(job: Path, capsys) -> None:
    """A location inside the bundle that the manifest does not list was never hash-checked: refused too."""
    b = job / "bundle"
    shutil.copy(b / "decoder.onnx.data", b / "extra.data")
    model = onnx.load(str(b / "decoder.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "extra.data"
    onnx.save(model, str(b / "decoder.onnx"))
    resign(b)
    assert "'extra.data', a file" in _refused(capsys, job, None)


def test_damaged_bundle_is_not_resigned(job: Path, capsys) -> None:
    data = job / "bundle" / "vision.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    line = _refused(capsys, job, None)
    assert "vision.onnx.data: sha256" in line and "does not match" in line


@pytest.mark.parametrize("name", ["tokenizer.json", "chat_template.json", "manifest.json"])
def test_side_file_linked_outside_is_refused(job: Path, capsys, name: str) -> None:
    b = job / "bundle"
    outside = Sentinel(job.parent / "outside" / name, (b / name).read_bytes())  # same bytes: hashes match
    (b / name).unlink()
    (b / name).symlink_to(outside.path)
    line = _refused(capsys, job, outside)
    assert f"{b / name}: this bundle file resolves to {outside.path}, outside the bundle directory" in line


def test_side_file_linked_inside_is_not_followed(job: Path, capsys) -> None:
    """A symlink that stays inside the bundle is readable, but quantize copies regular files only."""
    b = job / "bundle"
    (b / "sub").mkdir()
    shutil.move(b / "tokenizer_config.json", b / "sub" / "real.json")
    (b / "tokenizer_config.json").symlink_to(Path("sub") / "real.json")
    line = _refused(capsys, job, None)
    assert f"{b / 'tokenizer_config.json'}: is a symbolic link" in line
