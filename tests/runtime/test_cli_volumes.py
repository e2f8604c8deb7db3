"""Issue 14 items 5, 6, 12-14 and issue 16 item 2 through the `hulurt` command (in process) on a tiny bundle:
hostile headers exit 2 in one line naming the file; a large 2-D image is fitted into the bundle's visual
budget by default (said at -v) and refused naming the file with the upstream budget; a 600-slice NIfTI is
answered with default sampling and its note in -v output and in the timing summary; --window, --series and
--slices reach the readers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.cli import main
from media_files import deflate_bomb, series, zero_nii_gz  # tests/runtime

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
Image = pytest.importorskip("PIL.Image")
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="module")
def tiny() -> Path:
    return bundle("qwen2")


def _run(capfd: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capfd.readouterr()
    rc = main([str(a) for a in argv] + ["--skip-hash-check"])
    out, err = capfd.readouterr()
    return rc, out, err


def _refused(rc: int, out: str, err: str, path: Path, *words: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in err and out == ""


def test_deflate_bomb_dicom_one_line(tiny: Path, tmp_path: Path, capfd) -> None:
    p = deflate_bomb(tmp_path / "bomb.dcm")
    _refused(*_run(capfd, tiny, "--prompt", "What is shown?", "--image", p), p, "the limit is")


def test_nifti_1024_cubed_one_line(tiny: Path, tmp_path: Path, capfd) -> None:
    p = zero_nii_gz(tmp_path / "big.nii.gz", (1024, 1024, 1024))
    _refused(*_run(capfd, tiny, "--prompt", "What is shown?", "--volume", p), p, "the limit is")


def _xray(path: Path, side: int = 1400) -> Path:
    yy, xx = np.mgrid[0:side, 0:side]
    img = ((np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 128).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """What -v prints (pytest's log capture holds the root logger, so the CLI's basicConfig adds no handler)."""
    return "\n".join(r.getMessage() for r in caplog.records)


def test_large_image_fitted_by_default_and_said_at_v(tiny: Path, tmp_path: Path, capfd, caplog) -> None:
    p = _xray(tmp_path / "chest.png")
    with caplog.at_level(logging.INFO):
        rc, out, err = _run(capfd, tiny, "--prompt", "Findings?", "--image", p, "--max-new-tokens", "2", "-v")
    assert rc == 0, err
    log = _logged(caplog)
    assert "fitted into" in log and "upstream's default budget is 16384" in log, log


def test_large_image_with_upstream_budget_refused_naming_it(tiny: Path, tmp_path: Path, capfd) -> None:
    p = _xray(tmp_path / "chest.png")
    rc, out, err = _run(capfd, tiny, "--prompt", "Findings?", "--image", p, "--visual-budget", "upstream")
    _refused(rc, out, err, p, "visual tokens")


def test_600_slice_nifti_answered_with_its_note(tiny: Path, tmp_path: Path, capfd, caplog) -> None:
    rng = np.random.default_rng(6)
    vol = rng.integers(0, 255, (48, 48, 600)).astype(np.uint8)
    p = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    with caplog.at_level(logging.INFO):
        rc, out, err = _run(capfd, tiny, "--prompt", "Describe.", "--volume", p, "--max-new-tokens", "2",
                            "--no-token-reduction", "-v")
    assert rc == 0, err
    notes = [ln for ln in _logged(caplog).splitlines() if "600 slices sampled to" in ln]
    assert len(notes) == 1 and str(p) in notes[0], err
    summary = err.strip().splitlines()[-1]
    assert "thin.nii.gz: 600 -> " in summary and "slices sampled" in summary, summary
    # without -v only the summary says it
    caplog.clear()
    rc, out, err = _run(capfd, tiny, "--prompt", "Describe.", "--volume", p, "--max-new-tokens", "2",
                        "--no-token-reduction")
    assert rc == 0 and "600 slices sampled to" not in err and "600 -> " in err.strip().splitlines()[-1], err


def test_slices_window_series_options(tiny: Path, tmp_path: Path, capfd, caplog) -> None:
    d = series(tmp_path / "study", 12, uid="1.2.826.0.1.1")
    series(tmp_path / "study", 5, uid="1.2.826.0.1.2")
    with caplog.at_level(logging.INFO):
        rc, out, err = _run(capfd, tiny, "--prompt", "Describe.", "--volume", d, "--max-new-tokens", "2",
                            "--slices", "4", "--window", "lung", "-v")
    assert rc == 0, err
    log = _logged(caplog)
    assert "using the largest, 1.2.826.0.1.1 (12 files)" in log, log
    assert "4 of 12 frame(s), sorted by ImagePositionPatient, window (-600.0, 1500.0)" in log, log
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc, out, err = _run(capfd, tiny, "--prompt", "Describe.", "--volume", d, "--max-new-tokens", "2",
                            "--series", "1.2.826.0.1.2", "-v")
    log = _logged(caplog)
    assert rc == 0 and "5 of 5 frame(s)" in log and "using the largest" not in log, log
    rc, out, err = _run(capfd, tiny, "--prompt", "Describe.", "--volume", d, "--window", "wide")
    assert rc == 2 and "argument --window" in err and "CENTER,WIDTH" in err and len(err.strip().splitlines()) == 1


def test_undecodable_dicom_one_line_no_pydicom_traceback(tiny: Path, capfd) -> None:
    from pydicom.data import get_testdata_file

    p = Path(get_testdata_file("JPEG-lossy.dcm", download=False))
    _refused(*_run(capfd, tiny, "--prompt", "What is shown?", "--image", p), p, "cannot decode DICOM pixel data")
