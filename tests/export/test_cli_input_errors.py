"""Issue 14 items 7 and 11 on the `huluexport` side: bad input (manifest, checkpoint, config, options) exits 2
with one line naming the file and field, `-v` shows the traceback; `inspect` and `verify` check the manifest's
dims against the graphs and never crash on an edited `model` section; a build prints no third-party notices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e.hostile import edit_manifest
from hulurt.errors import ManifestError
from stderr_lines import error_lines

from huluexport.cli import main
from huluexport.errors import CheckpointError, ConfigError


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def _one_line(code: int, err: str) -> str:
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


@pytest.fixture()
def copy(bundle_factory, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_factory("qwen2", "fp32"), tmp_path / "bundle"))


@pytest.mark.parametrize("command", ["inspect", "verify"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dims.hidden", 128, "field 'dims.hidden' is 128, but vision.onnx output 'visual_embeds' axis 2 is 64"),
        ("dims.layers", 3, "field 'dims.layers': decoder.onnx declares 6 inputs"),
        ("limits.max_context", 10**12, "field 'limits.max_context'"),
        ("reduction.mode", "bogus", "field 'reduction.mode'"),
    ],
)
def test_edited_manifest_exits_2_naming_the_field(copy: Path, capsys, command: str, field, value, message) -> None:
    edit_manifest(copy, field, value)
    code, _, err = _cli(capsys, command, str(copy), "--no-hash")
    line = _one_line(code, err)
    assert message in line and str(copy / "manifest.json") in line


def test_empty_model_section(copy: Path, capsys) -> None:
    edit_manifest(copy, "model", {})
    code, out, err = _cli(capsys, "inspect", str(copy))
    assert code == 0, err  # informational for the runtime and inspect (sizes come from `dims`)
    assert "2 decoder layers, hidden 64" in out and "decoder flavour not recorded" in out
    code, _, err = _cli(capsys, "verify", str(copy))
    assert "field 'model.tokens': expected an object, found NoneType" in _one_line(code, err)
    edit_manifest(copy, "model", {"name": "x", "tokens": {}, "preprocess": {}})
    code, _, err = _cli(capsys, "verify", str(copy))
    assert "field 'model': missing key 'eos'" in _one_line(code, err)


def test_verbose_shows_the_traceback(copy: Path) -> None:
    edit_manifest(copy, "dims.kv_heads", -1)
    with pytest.raises(ManifestError, match="field 'dims.kv_heads': expected 1..1024, found -1"):
        main(["-v", "inspect", str(copy)])


def test_checkpoint_and_config_errors_exit_2(ckpt_qwen2: Path, tmp_path: Path, capsys) -> None:
    ck = Path(shutil.copytree(ckpt_qwen2, tmp_path / "ck"))
    (ck / "config.json").write_text("{not json")
    code, _, err = _cli(capsys, "build", "--checkpoint", str(ck), "--out", str(tmp_path / "b"))
    assert "config.json" in _one_line(code, err)
    (ck / "config.json").unlink()
    code, _, err = _cli(capsys, "build", "--checkpoint", str(ck), "--out", str(tmp_path / "b"))
    assert "config.json" in _one_line(code, err)
    code, _, err = _cli(capsys, "build", "--size", "tiny", "--out", str(tmp_path / "b"))
    assert "--random-weights" in _one_line(code, err)
    assert not (tmp_path / "b").exists()
    with pytest.raises((CheckpointError, ConfigError)):
        main(["-v", "build", "--checkpoint", str(ck), "--out", str(tmp_path / "b")])


def test_build_prints_no_third_party_notices(tmp_path: Path) -> None:
    """A whole CLI build (tiny, one layer) as a user runs it with -q: stdout says where the bundle is, stderr is
    empty (torch.onnx warned once per torchvision op it could not register, four lines per piece, on every build).
    Without -q, tests/export/test_progress_cli.py checks every stderr line is one of the progress lines."""
    out = tmp_path / "b"
    r = subprocess.run(
        [sys.executable, "-c", "from huluexport.cli import main; main()", "-q", "build", "--size", "tiny",
         "--random-weights", "--layers", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=900, check=False, env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"bundle: {out}" and r.stderr == "", r.stderr
    assert json.loads((out / "manifest.json").read_text())["dims"]["layers"] == 1
