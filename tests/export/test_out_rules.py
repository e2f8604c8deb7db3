"""Issue 14 items 1 and 4: what `--out` / `--overwrite` of `build` and `quantize` may replace (only a bundle,
never the input, a folder holding it, a plain file, a link or a folder of other files), refused in one line with
exit 2 before any work and with nothing around the job written or deleted; interrupted runs leave no staging
directory (signals), and stale ones of ours are removed by the next run while anything else is left alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from e2e.hostile import snapshot
from hulurt.manifest import load_manifest
from stderr_lines import error_lines

from huluexport.cli import main
from huluexport.export.staging import MARKER


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    return int(exc.value.code or 0), capsys.readouterr().err


def _refused(capsys, root: Path, *args: str) -> str:
    """Run the CLI; assert exit 2, one `error: --out ...` line, and the tree under `root` unchanged."""
    before = snapshot(root)
    code, err = _cli(capsys, *args)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --out "), (code, err)
    assert snapshot(root) == before, "a refused command changed files around the job"
    return lines[0]


@pytest.fixture()
def job(tmp_path: Path, ckpt_qwen2: Path, bundle_factory) -> Path:
    """tmp/job: a checkpoint, a bundle, a folder of unrelated files, a plain file, a link to the bundle, and
    a folder with a bundle-looking manifest plus a file it does not list."""
    j = tmp_path / "job"
    j.mkdir()
    shutil.copytree(ckpt_qwen2, j / "ck")
    shutil.copytree(bundle_factory("qwen2", "fp32"), j / "bundle")
    (j / "notes").mkdir()
    (j / "notes" / "patient-list.csv").write_text("id,name\n1,x\n")
    (j / "report.txt").write_text("not a bundle\n")
    (j / "link").symlink_to(j / "bundle")
    (j / "lookalike").mkdir()
    (j / "lookalike" / "manifest.json").write_text(json.dumps({"format": "huluexport-bundle", "files": {}}))
    (j / "lookalike" / "thesis.docx").write_text("mine")
    return j


@pytest.mark.parametrize(
    ("out", "why"),
    [
        ("ck", "is the input"),
        (".", "contains the input"),
        ("ck/inner", "is inside the input"),
        ("notes", "not a huluexport bundle"),
        ("report.txt", "is a file, not a bundle directory"),
        ("link", "is a symbolic link"),
        ("lookalike", "holds 'thesis.docx', which its manifest.json does not list"),
    ],
)
def test_build_overwrite_replaces_only_a_bundle(job: Path, capsys, monkeypatch, out: str, why: str) -> None:
    monkeypatch.chdir(job)
    line = _refused(capsys, job.parent, "build", "--checkpoint", "ck", "--out", out, "--overwrite")
    assert why in line


def test_build_out_parent_of_checkpoint_and_existing_without_overwrite(job: Path, capsys) -> None:
    line = _refused(capsys, job.parent, "build", "--checkpoint", str(job / "ck"), "--out", str(job), "--overwrite")
    assert f"--out {job}: contains the input" in line
    line = _refused(capsys, job.parent, "build", "--size", "tiny", "--random-weights", "--out", str(job / "bundle"))
    assert "already exists; pass --overwrite" in line


@pytest.mark.parametrize(
    ("out", "why"),
    [("bundle", "is the input"), (".", "contains the input"), ("report.txt", "is a file"),
     ("notes", "not a huluexport bundle")],
)
def test_quantize_overwrite_replaces_only_a_bundle(job: Path, capsys, monkeypatch, out: str, why: str) -> None:
    monkeypatch.chdir(job)
    line = _refused(capsys, job.parent, "quantize", "bundle", "--out", out, "--bits", "8", "--overwrite")
    assert why in line


def test_current_directory_is_never_replaced(job: Path, capsys, monkeypatch) -> None:
    """Even a real bundle is not replaced while it is the current directory (the shell would sit in a deleted one)."""
    monkeypatch.chdir(job / "bundle")
    line = _refused(capsys, job.parent, "build", "--size", "tiny", "--random-weights", "--out", ".", "--overwrite")
    assert "is (or contains) the current directory" in line


def test_overwrite_replaces_an_existing_bundle(job: Path, capsys) -> None:
    out = job / "q"
    assert _cli(capsys, "-q", "quantize", str(job / "bundle"), "--out", str(out), "--bits", "8") == (0, "")
    first = load_manifest(out).files["decoder.onnx.data"].sha256
    around = {k: v for k, v in snapshot(job).items() if not k.startswith("q")}
    code, err = _cli(capsys, "quantize", str(job / "bundle"), "--out", str(out), "--bits", "4", "--overwrite")
    assert code == 0, err
    m = load_manifest(out)
    assert m.pieces["decoder"].precision == "int4" and m.files["decoder.onnx.data"].sha256 != first
    assert MARKER not in m.files and not (out / MARKER).exists()
    assert {k: v for k, v in snapshot(job).items() if not k.startswith("q")} == around
    assert not [p.name for p in job.iterdir() if p.name.startswith(".q.")]  # no partial / old directory left
    (job / "empty").mkdir()  # made beforehand: nothing to lose, replaced with --overwrite only
    assert "already exists" in _refused(capsys, job.parent, "quantize", str(job / "bundle"), "--out",
                                        str(job / "empty"), "--bits", "8")
    assert _cli(capsys, "-q", "quantize", str(job / "bundle"), "--out", str(job / "empty"), "--bits", "8",
                "--overwrite") == (0, "")
    assert load_manifest(job / "empty").pieces["decoder"].precision == "int8"


# --------------------------------------------------------------------------------------------------
# Item 4: interrupted runs
# --------------------------------------------------------------------------------------------------

_STAGE = textwrap.dedent(
    """
    import os, signal, sys, time
    from huluexport.export.staging import staged
    # as a run from a terminal: the test runner itself may have been started with SIGHUP/SIGINT ignored (nohup, a
    # background job), which the child inherits and staged() rightly leaves ignored
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with staged(sys.argv[1]) as tmp:
        (tmp / "decoder.onnx.data").write_bytes(b"x" * 1000)
        print(tmp, flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), 9)
        time.sleep(120)
    """
)


def _stage(out: Path, how: str) -> tuple[subprocess.Popen[str], Path]:
    p = subprocess.Popen([sys.executable, "-c", _STAGE, str(out), how], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, Path(p.stdout.readline().strip())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_removes_the_staging_directory(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "b"
    proc, tmp = _stage(out, "wait")
    assert tmp.parent == tmp_path and tmp.name.startswith(".b.partial-") and (tmp / MARKER).is_file()
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert code != 0
    assert list(tmp_path.iterdir()) == [], "an interrupted run left files behind"


def test_stale_staging_of_ours_removed_by_next_run_others_kept(job: Path, capsys) -> None:
    out = job / "q"
    dead, stale = _stage(out, "kill")  # SIGKILL: nothing can clean up
    assert dead.wait(timeout=60) == -9 and (stale / MARKER).is_file()
    live, running = _stage(out, "wait")  # a concurrent run for the same --out, still alive
    decoy = job / ".q.partial-decoy"  # right name, no marker: not ours
    decoy.mkdir()
    (decoy / "keep.txt").write_text("someone else's")
    foreign = job / ".q.partial-foreign"  # our marker, but written for another --out
    foreign.mkdir()
    (foreign / MARKER).write_text(json.dumps({"tool": "huluexport", "out": str(job / "other")}))
    try:
        kept = {k: v for k, v in snapshot(job).items() if not k.startswith(stale.name)}
        code, err = _cli(capsys, "quantize", str(job / "bundle"), "--out", str(out), "--bits", "8")
        assert code == 0, err
        assert not stale.exists(), "the stale staging directory of a killed run was not removed"
        after = snapshot(job)
        assert {k: v for k, v in after.items() if k in kept} == kept  # decoys and the live run untouched
        assert running.is_dir() and (running / MARKER).is_file()
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(timeout=60)
    assert not running.exists()
    assert sorted(p.name for p in job.iterdir() if p.name.startswith(".q.")) == [".q.partial-decoy",
                                                                                 ".q.partial-foreign"]


def test_marker_never_lands_in_a_bundle(bundle_factory) -> None:
    b = bundle_factory("qwen2", "fp32")
    assert not (b / MARKER).exists() and MARKER not in load_manifest(b, verify_hashes=False).files
    assert not list(b.parent.glob(f".{b.name}.partial-*"))
    assert oct(os.stat(b).st_mode & 0o777) == "0o755"
