"""Issue 14 items 5, 12-14 and issue 16 items 1-2 on the readers: hostile headers refused from the header alone
(no big allocation), the DICOM codecs of the `volume` extra, windows and VOI LUTs, study folders, slice
sampling by upstream's linspace rule, and NIfTI slices identical to nibabel's get_fdata() values."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hulurt import media as md
from hulurt.errors import UnsupportedInputError
from media_files import deflate_bomb, nifti_header, series, zero_nii_gz  # noqa: E402  (tests/runtime)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
MiB = 1 << 20


def _one_line(exc: pytest.ExceptionInfo[UnsupportedInputError], path: object, *words: str) -> str:
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def _peak(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """(result or exception, peak traced bytes) -- numpy and zlib allocations are traced."""
    tracemalloc.start()
    try:
        try:
            out = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the caller asserts on it
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------ hostile headers


def test_deflate_bomb_dicom_refused_from_its_header(tmp_path: Path) -> None:
    p = deflate_bomb(tmp_path / "bomb.dcm")
    assert p.stat().st_size < 2 * MiB
    err, peak = _peak(md.load_dicom, p)
    assert isinstance(err, md.CorruptInputError), err
    msg = str(err)
    assert str(p) in msg and "32 x 4096x4096" in msg and "16-bit" in msg and "the limit is" in msg and "\n" not in msg
    assert peak < 80 * MiB, f"peak {peak / MiB:.0f} MiB while refusing"


def test_deflate_dicom_within_limits_still_reads(tmp_path: Path) -> None:
    p = deflate_bomb(tmp_path / "small.dcm", frames=2, side=64)
    m = md.load_dicom(p)
    assert m.frames.shape == (2, 64, 64, 1) and m.info["window"] == "minmax"


def test_nifti_1024_cubed_refused_from_header(tmp_path: Path) -> None:
    p = zero_nii_gz(tmp_path / "big.nii.gz", (1024, 1024, 1024))  # ~1 MB on disk, 1 GiB of voxels
    err, peak = _peak(md.load_nifti, p)
    assert isinstance(err, md.CorruptInputError), err
    assert str(p) in str(err) and "1024 frame(s) of 1024x1024" in str(err) and "the limit is" in str(err)
    assert peak < 16 * MiB


def test_nifti_lying_gz_refused_before_reading(tmp_path: Path) -> None:
    p = zero_nii_gz(tmp_path / "lie.nii.gz", (512, 512, 512), np.float32, cut=130_000)
    err, peak = _peak(md.load_nifti, p)
    assert isinstance(err, md.CorruptInputError), err
    assert str(p) in str(err) and "more than deflate can hold" in str(err)
    assert peak < 16 * MiB


def test_nifti_512_cubed_sampled_to_the_frame_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = zero_nii_gz(tmp_path / "cube.nii.gz", (512, 512, 512))  # ~130 KB
    assert p.stat().st_size < 200_000
    with caplog.at_level(logging.INFO, logger="hulurt.media"):
        m, peak = _peak(md.load_nifti, p, limits=md.ReadLimits(max_frames=64))
    assert isinstance(m, md.Media), m
    assert m.frames.shape == (64, 512, 512, 1)
    assert m.info["slices"] == np.linspace(0, 511, 64).astype(int).tolist()
    out = m.frames.nbytes
    assert peak < out + 16 * MiB, f"peak {peak / MiB:.0f} MiB for {out / MiB:.0f} MiB of output"
    notes = [r.getMessage() for r in caplog.records if "sampled" in r.getMessage()]
    assert notes == [m.info["note"]] and str(p) in notes[0] and "512 slices sampled to 64" in notes[0]


def test_uncompressed_nifti_shorter_than_its_header(tmp_path: Path) -> None:
    p = tmp_path / "short.nii"
    p.write_bytes(nifti_header((64, 64, 64), np.int16) + bytes(1000))
    with pytest.raises(md.CorruptInputError) as e:
        md.load_nifti(p)
    _one_line(e, p, "cut short")


# --------------------------------------------------------------------------- NIfTI: slices like get_fdata


def _reference_nifti(path: Path, axis: int, profile: str, num_slices: int | None) -> np.ndarray:
    """The previous reader's arithmetic (whole get_fdata volume, np.take per slice), as the oracle."""
    from hulurt.media.nifti import _minmax_slice

    vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float64))
    vol = vol.reshape(vol.shape[:3])
    n = vol.shape[axis]
    if profile == "hf":
        idx = np.linspace(0, n - 1, num_slices).astype(int) if num_slices and num_slices < n else np.arange(n)
    else:
        idx = np.linspace(0, n - 1, num_slices or 180).astype(int)
    return np.stack([_minmax_slice(np.take(vol, k, axis=axis), profile) for k in idx])


def _scaled_nii(d: Path) -> Path:
    """int16 voxels with scl_slope/scl_inter (like nibabel's functional.nii), gzipped."""
    img = nib.Nifti1Image(np.random.default_rng(3).integers(-900, 3000, (30, 26, 22)).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(0.07540696859359741, 3100.76171875)
    p = d / "scaled.nii.gz"
    nib.save(img, p)
    return p


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "scaled"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nifti_slices_equal_the_whole_volume_reader(name: str, axis: int, tmp_path: Path) -> None:
    path = _scaled_nii(tmp_path) if name == "scaled" else NIBABEL_DATA / name
    for profile, k in (("hf", None), ("hf", 7), ("original", None)):
        got = md.load_nifti(path, profile=profile, axis=axis, num_slices=k).frames[..., 0]
        np.testing.assert_array_equal(got, _reference_nifti(path, axis, profile, k))


@pytest.mark.parametrize("inflate", ["isal", "zlib"])
def test_nifti_gz_both_inflaters_give_get_fdata_slices(inflate: str, tmp_path: Path, monkeypatch) -> None:
    """A .nii.gz goes through ISA-L's inflate where python-isal is installed and through nibabel's zlib reader
    where it is not: both give the whole-volume reader's slices, 4-D singleton volumes included, and both
    refuse a cut-short file in one line."""
    from hulurt.media import nifti

    if inflate == "isal":
        assert nifti._igzip() is not None, "python-isal is pinned in requirements/dev.txt"
    else:
        monkeypatch.setattr(nifti, "_igzip", lambda: None)
    scaled = _scaled_nii(tmp_path)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(5).normal(size=(20, 18, 16, 1)).astype(np.float32), np.eye(4)), four)
    for path in (scaled, four):
        for axis in (0, 1, 2):
            got = md.load_nifti(path, axis=axis, num_slices=5).frames[..., 0]
            np.testing.assert_array_equal(got, _reference_nifti(path, axis, "hf", 5))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(scaled.read_bytes()[: scaled.stat().st_size // 2])
    with pytest.raises(md.CorruptInputError) as e:
        md.load_nifti(cut)
    _one_line(e, cut, "cannot read NIfTI volume")


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int8])
def test_nifti_small_int_table_equals_the_float_formula(dtype: type, tmp_path: Path) -> None:
    """Unscaled 8/16-bit voxels go through the per-slice lookup table: equal to the float64 formula, a
    constant slice included (hf: zeros; original: upstream's wrapped cast)."""
    info = np.iinfo(dtype)
    vol = np.random.default_rng(7).integers(info.min, int(info.max) + 1, (24, 20, 16)).astype(dtype)
    vol[:, :, 4] = info.max - 3  # constant slice
    vol[:, :, 6] = np.clip(vol[:, :, 6], info.min, info.min + 2)  # three values only
    p = tmp_path / "ints.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    assert nib.load(str(p)).dataobj.slope == 1.0
    for profile in ("hf", "original"):
        for axis in (0, 1, 2):
            got = md.load_nifti(p, profile=profile, axis=axis).frames[..., 0]
            np.testing.assert_array_equal(got, _reference_nifti(p, axis, profile, None))


def test_nifti_num_slices_above_the_bundle_frames_refused(tmp_path: Path) -> None:
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 30)).astype(np.float32), np.eye(4)), p)
    with pytest.raises(UnsupportedInputError) as e:
        md.load_nifti(p, num_slices=12, limits=md.ReadLimits(max_frames=10))
    _one_line(e, p, "num_slices=12", "10 frames")
    orig = md.load_nifti(p, profile="original", limits=md.ReadLimits(max_frames=10))
    assert orig.frames.shape[0] == 10 and "180 slices reduced to 10" in orig.info["note"]


# ----------------------------------------------------------------------------------------- DICOM codecs


@pytest.mark.parametrize(
    "compressed, plain",
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),  # pydicom-data
    ],
)
def test_lossless_codecs_decode_to_the_uncompressed_twin(compressed: str, plain: str) -> None:
    a, b = get_testdata_file(compressed, download=False), get_testdata_file(plain, download=False)
    if a is None or b is None:
        pytest.skip("pydicom-data is not installed (requirements/dev.txt pins it)")
    np.testing.assert_array_equal(md.load_dicom(a).frames, md.load_dicom(b).frames)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_jpeg_lossless_12bit_and_2000_decode(name: str) -> None:
    """JPEG Lossless (process 14), 12-bit JPEG Extended (process 2/4), JPEG 2000: decoded by pylibjpeg."""
    p = get_testdata_file(name, download=False)
    if p is None:
        pytest.skip("pydicom-data is not installed")
    m = md.load_dicom(p)
    assert m.frames.std() > 5, name


def test_undecodable_dicom_is_one_line_without_pydicom_tracebacks(tmp_path: Path, capsys, caplog) -> None:
    # a 12-bit JPEG with a misplaced marker: no installed codec takes it
    p = get_testdata_file("JPEG-lossy.dcm", download=False)
    with pytest.raises(md.CorruptInputError) as e:
        md.load_dicom(p)
    _one_line(e, p, "cannot decode DICOM pixel data")
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


# ----------------------------------------------------------------------------- windows, VOI, study folders


def test_window_spellings_agree() -> None:
    ct = PYDICOM_DATA / "CT_small.dcm"
    lung = md.load_dicom(ct, window="lung")
    assert lung.info["window"] == md.CT_PRESETS["lung"] and lung.info["window_source"] == "preset lung"
    np.testing.assert_array_equal(lung.frames, md.load_dicom(ct, window="-600,1500").frames)
    np.testing.assert_array_equal(lung.frames, md.load_dicom(ct, preset="lung").frames)
    with pytest.raises(UnsupportedInputError) as e:
        md.load_dicom(ct, window="wide")
    _one_line(e, ct, "CENTER,WIDTH")


def test_voi_lut_from_the_file() -> None:
    p = get_testdata_file("vlut_04.dcm", download=False)
    if p is None:
        pytest.skip("pydicom-data is not installed")
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(p)
    m = md.load_dicom(p)
    assert m.info["window"] == "file VOI LUT"
    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    want = (np.clip(apply_voi_lut(ds.pixel_array, ds).astype(np.float64) / (2**depth - 1), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(m.frames[0, ..., 0], want)
    assert md.load_dicom(p, use_file_window=False).info["window"] == "minmax"


def test_series_num_slices_and_info_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = series(tmp_path / "s", 30)
    m = md.load_dicom(d, num_slices=7, window="brain")
    assert m.info["slices"] == np.linspace(0, 29, 7).astype(int).tolist()
    assert m.info["sorted_by"] == "ImagePositionPatient" and m.info["window"] == (40.0, 80.0)
    assert m.info["series_uid"] == str(pydicom.dcmread(next(d.iterdir())).SeriesInstanceUID)
    with caplog.at_level(logging.INFO, logger="hulurt.media"):
        s = md.load_dicom(d, limits=md.ReadLimits(max_frames=10))
    assert s.frames.shape[0] == 10 and "30 slices sampled to 10" in s.info["note"]
    assert any("30 slices sampled to 10" in r.getMessage() for r in caplog.records)


def test_series_min_max_matches_stacked_volume(tmp_path: Path) -> None:
    """Per-slice decoding gives exactly the old whole-volume float64 min-max."""
    d = series(tmp_path / "s", 6)
    m = md.load_dicom(d, use_file_window=False)
    files = sorted(d.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    vol = np.stack([pydicom.dcmread(f).pixel_array.astype(np.float64) * 1.0 + float(pydicom.dcmread(f).RescaleIntercept)
                    for f in files])
    lo, hi = vol.min(), vol.max()
    np.testing.assert_array_equal(m.frames[..., 0], ((vol - lo) / (hi - lo) * 255).astype(np.uint8))


def test_series_memory_stays_near_the_output(tmp_path: Path) -> None:
    d = series(tmp_path / "s", 40, side=256)
    m, peak = _peak(md.load_dicom, d, window="abdomen")
    assert isinstance(m, md.Media), m
    # the output (2.6 MB) plus a few frames and the headers; the old reader held 40 float64 frames twice
    assert peak < m.frames.nbytes + 12 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_dicom_frame_header_refused_before_decoding(tmp_path: Path) -> None:
    ds = pydicom.dcmread(PYDICOM_DATA / "CT_small.dcm")
    ds.Rows = ds.Columns = 60000  # 3.6e9 pixels per frame, declared over a 32 KB pixel element
    p = tmp_path / "huge.dcm"
    ds.save_as(p)
    err, peak = _peak(md.load_dicom, p)
    assert isinstance(err, md.CorruptInputError) and "pixels per frame" in str(err) and str(p) in str(err), err
    assert peak < 16 * MiB


def test_palette_file_without_a_transfer_syntax_decodes() -> None:
    """OT-PAL-8-face.dcm has no (0002,0010): the encoding pydicom read it with stands in, as pixel_array does."""
    p = get_testdata_file("OT-PAL-8-face.dcm", download=False)
    if p is None:
        pytest.skip("pydicom-data is not installed")
    m = md.load_dicom(p)
    assert m.frames.shape == (1, 480, 640, 3) and m.frames.std() > 10 and m.info["window"] is None
