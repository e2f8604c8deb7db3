"""Every bad input of issue 3 through the runtime CLI (`python -m hulurt` main, in process): exit 2, exactly one
stderr line naming the file and the reason, no traceback, no native-library noise."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.__main__ import main

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
Image = pytest.importorskip("PIL.Image")
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def tiny() -> Path:
    return bundle("qwen2")


def _nii(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    return path


def _missing(d: Path) -> tuple[str, Path]:
    return "--image", d / "nope.png"


def _empty(d: Path) -> tuple[str, Path]:
    p = d / "empty.nii.gz"
    p.write_bytes(b"")
    return "--volume", p


def _truncated_nii(d: Path) -> tuple[str, Path]:
    good = _nii(d / "good.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 16)))
    p = d / "cut.nii.gz"
    p.write_bytes(good.read_bytes()[:300])
    return "--volume", p


def _dicom_no_pixels(d: Path) -> tuple[str, Path]:
    return "--image", PYDICOM_DATA / "rtstruct.dcm"


def _mixed_series(d: Path) -> tuple[str, Path]:
    s = d / "series"
    s.mkdir()
    for k, n in enumerate((128, 128, 64)):
        ds = pydicom.dcmread(PYDICOM_DATA / "CT_small.dcm")
        px = ds.pixel_array[:n, :n].copy()
        ds.Rows = ds.Columns = n
        ds.PixelData = px.tobytes()
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.save_as(s / f"{k}.dcm")
    return "--volume", s


def _four_d(d: Path) -> tuple[str, Path]:
    return "--volume", NIBABEL_DATA / "example4d.nii.gz"


def _nan_voxels(d: Path) -> tuple[str, Path]:
    v = np.random.default_rng(1).normal(size=(16, 16, 4))
    v[2, 3, 1] = np.nan
    return "--volume", _nii(d / "nan.nii.gz", v)


def _one_pixel(d: Path) -> tuple[str, Path]:
    p = d / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p)
    return "--image", p


def _bomb(d: Path) -> tuple[str, Path]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    p = d / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return "--image", p


def _bad_video(d: Path) -> tuple[str, Path]:
    p = d / "clip.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    return "--video", p


def _bad_extension(d: Path) -> tuple[str, Path]:
    p = d / "report.pdf"
    p.write_bytes(b"%PDF-1.4")
    return "--image", p


CASES = {
    "missing file": (_missing, "file not found"),
    "empty file": (_empty, "empty"),
    "truncated .nii.gz": (_truncated_nii, "cannot read NIfTI"),
    "DICOM without pixel data": (_dicom_no_pixels, "no pixel data"),
    "mixed-size series": (_mixed_series, "mixes slice sizes"),
    "4-D NIfTI": (_four_d, "3-D volume"),
    "NaN voxels": (_nan_voxels, "NaN or infinite"),
    "1-pixel image": (_one_pixel, "1x1 pixels"),
    "decompression bomb": (_bomb, "limit"),
    "unreadable video": (_bad_video, "cannot decode video"),
    "unsupported extension": (_bad_extension, "unsupported file type"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_bad_input_exits_2_with_one_line(tiny, tmp_path, capfd, case):
    make, reason = CASES[case]
    flag, path = make(tmp_path)
    capfd.readouterr()
    rc = main([str(tiny), "--prompt", "What is shown?", flag, str(path), "--skip-hash-check"])
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
