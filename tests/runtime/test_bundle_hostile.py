"""Issue 14 items 3 and 7, bundle side: a bundle is input like any file. Files linked outside the bundle are
refused naming the file, without reading the outside copy; every manifest field is type- and range-checked, and
the dims are cross-checked against the graphs' declared inputs/outputs, before anything is sized from them. Each
refusal is one line naming the file and the field (exit 2 from `python -m hulurt`). No huluexport import here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hulurt
import pytest
from e2e.bundles import bundle
from e2e.hostile import Sentinel, edit_manifest, one_error_line, run_module
from hulurt.errors import ManifestError
from hulurt.manifest import load_manifest


@pytest.fixture(scope="module")
def tiny() -> Path:
    return bundle("qwen2")


@pytest.fixture()
def copy(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "job" / "bundle"))


def _hulurt(b: Path) -> str:
    return one_error_line(run_module("hulurt", b, "--prompt", "hi", "--max-new-tokens", "1", "--threads", "1"))


# --------------------------------------------------------------------------------------------------
# Item 3: every path read must resolve inside the bundle
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["manifest.json", "tokenizer.json", "chat_template.json", "decoder.onnx", "decoder.onnx.data"]
)
def test_file_linked_outside_is_refused_unread(copy: Path, name: str) -> None:
    outside = Sentinel(copy.parent.parent / "outside" / name, (copy / name).read_bytes())  # same bytes, same hash
    (copy / name).unlink()
    (copy / name).symlink_to(outside.path)
    line = _hulurt(copy)
    assert f"{copy / name}: this bundle file resolves to {outside.path}, outside the bundle directory" in line
    assert outside.untouched(), f"{outside.path} was read"
    with pytest.raises(ManifestError, match="outside the bundle directory"):
        load_manifest(copy, verify_hashes=False)  # also without hashing
    assert outside.untouched()


def test_unlisted_link_outside_is_refused(copy: Path) -> None:
    """onnxruntime opens external data by the name the graph records, which need not be a listed file."""
    outside = Sentinel(copy.parent.parent / "outside" / "secret.bin", b"\0" * 64)
    (copy / "extra.onnx.data").symlink_to(outside.path)
    assert "extra.onnx.data: this bundle file resolves to" in _hulurt(copy)
    assert outside.untouched()


def test_links_that_stay_inside_are_fine(copy: Path) -> None:
    (copy / "tok").mkdir()
    shutil.move(copy / "tokenizer.json", copy / "tok" / "tokenizer.json")
    (copy / "tokenizer.json").symlink_to(Path("tok") / "tokenizer.json")
    model = hulurt.load(copy, threads=1)
    assert model.generate("hi", max_new_tokens=2).token_ids


# --------------------------------------------------------------------------------------------------
# Item 7: every manifest field validated before any allocation, one line naming the field
# --------------------------------------------------------------------------------------------------

EDITS = [
    ("dims.hidden", 128, "field 'dims.hidden' is 128, but embed.onnx"),  # in range, but not the graphs' width
    ("dims.layers", 3, "field 'dims.layers': decoder.onnx declares 6 inputs"),
    ("dims.layers", 10**7, "field 'dims.layers': expected 1..1024"),
    ("dims.kv_heads", -1, "field 'dims.kv_heads': expected 1..1024, found -1"),
    ("dims.vocab", "320", "field 'dims.vocab': expected int, found '320'"),
    ("limits.max_context", 10**12, "field 'limits.max_context': expected dim_ranges.total_len.max"),
    ("dim_ranges.total_len.max", 10**12, "field 'dim_ranges.total_len.max': expected 1..1048576"),
    ("preprocess.min_tokens", 10**9, "field 'preprocess.min_tokens': expected 1..16384"),
    ("preprocess.max_tokens", 0, "field 'preprocess.max_tokens': expected 1..1048576, found 0"),
    ("preprocess.fps", float("nan"), "field 'preprocess.fps': expected a finite number"),
    ("reduction.mode", "bogus", "field 'reduction.mode': expected one of ('bf16', 'fp32'), found 'bogus'"),
    ("tokens.image", 10**6, "field 'tokens.image': expected 0..319"),
    ("vision.merge_video", 3, "field 'vision.merge_video': expected one of (1, 2)"),
    ("files/decoder.onnx", {"sha256": "zz", "bytes": 1}, "field 'files.decoder.onnx.sha256'"),
    ("tokens", [1, 2], "field 'tokens': expected an object, found list"),
]


@pytest.mark.parametrize(("field", "value", "message"), EDITS, ids=[e[0] + "=" + str(e[1])[:12] for e in EDITS])
def test_manifest_field_validated(copy: Path, field: str, value: object, message: str) -> None:
    edit_manifest(copy, field, value)
    with pytest.raises(ManifestError) as exc:
        hulurt.load(copy, threads=1, verify_hashes=False)
    text = str(exc.value)
    assert message in text and "\n" not in text and str(copy / "manifest.json") in text, text


def test_huge_integer_and_deep_nesting(copy: Path) -> None:
    path = copy / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace('"hidden": 64', '"hidden": ' + "9" * 5000, 1))
    with pytest.raises(ManifestError, match="field 'dims.hidden': expected int, found an integer of 5000 digits"):
        load_manifest(copy)
    m = json.loads(text)
    m["model"] = "@"
    path.write_text(json.dumps(m).replace('"@"', "[" * 200_000 + "]" * 200_000))
    with pytest.raises(ManifestError, match=r"manifest.json: unreadable JSON \(nested too deeply\)"):
        load_manifest(copy)
    path.write_text(" " * (5 << 20))
    with pytest.raises(ManifestError, match="bytes; a bundle manifest is a few KB"):
        load_manifest(copy)


@pytest.mark.parametrize(("field", "value", "message"), [EDITS[1], EDITS[5]], ids=["layers", "max_context"])
def test_cli_exit_2_one_line(copy: Path, field: str, value: object, message: str) -> None:
    edit_manifest(copy, field, value)
    line = _hulurt(copy)
    assert message in line and "manifest.json" in line
