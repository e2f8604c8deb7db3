"""hulurt.media readers on real files (Pillow, pydicom's and nibabel's bundled data, PyAV-written video) and
every bad input of issue 3, each an UnsupportedInputError naming the file and the reason."""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hulurt import media as md
from hulurt.errors import UnsupportedInputError
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def _av():
    """PyAV, for the video tests only: without it those skip (and say so); images, DICOM and NIfTI still run."""
    return pytest.importorskip("av", reason="PyAV (hulurt's `video` extra) not installed: video test NOT run")


PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
CT_SMALL = PYDICOM_DATA / "CT_small.dcm"
MR_SMALL = PYDICOM_DATA / "MR_small.dcm"


def _err(exc: pytest.ExceptionInfo[UnsupportedInputError], path: object, *words: str) -> None:
    msg = str(exc.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def write_mp4(path: Path, n: int = 30, rate: int = 10, size: tuple[int, int] = (64, 96)) -> np.ndarray:
    """A moving bar video written with PyAV; returns the frames written (RGB)."""
    av = _av()
    h, w = size
    frames = []
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 4_000_000
        for i in range(n):
            a = np.full((h, w, 3), 30, np.uint8)
            a[:, (i * 3) % (w - 16) : (i * 3) % (w - 16) + 16] = (220, 200, 40)
            frames.append(a)
            for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return np.stack(frames)


# ------------------------------------------------------------------------------------------------- images


def test_png_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    m = md.load_image(tmp_path / "rgb.png")
    assert m.frames.shape == (1, 40, 60, 3) and m.modal == "image" and m.pil_size_swap
    np.testing.assert_array_equal(m.frames[0], rgb)

    rgba = np.concatenate([rgb, np.full((40, 60, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(md.load_image(tmp_path / "rgba.png").frames[0], rgb)  # alpha dropped

    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g8.png")
    g = md.load_image(tmp_path / "g8.png")
    assert g.frames.shape == (1, 40, 60, 1)
    np.testing.assert_array_equal(g.frames[0, ..., 0], gray)

    g16 = (np.arange(40 * 60).reshape(40, 60) * 10 + 1000).astype(np.uint16)  # 1000 .. 24990
    Image.fromarray(g16).save(tmp_path / "g16.png")
    h = md.load_image(tmp_path / "g16.png", pil_size_swap=False)
    assert h.frames.shape == (1, 40, 60, 1) and not h.pil_size_swap
    assert h.frames.min() == 0 and h.frames.max() == 255  # full 16-bit range scaled, not clipped at 255
    expected = ((g16 - 1000.0) * (255.0 / (g16.max() - 1000.0))).astype(np.uint8)
    np.testing.assert_array_equal(h.frames[0, ..., 0], expected)


def test_image_from_array():
    a = np.zeros((30, 20, 4), np.uint8)
    m = md.image_from_array(a)
    assert m.frames.shape == (1, 30, 20, 3) and not m.pil_size_swap
    with pytest.raises(UnsupportedInputError, match="shape"):
        md.image_from_array(np.zeros((3, 30, 20, 3), np.uint8))


# -------------------------------------------------------------------------------------------------- DICOM


def test_dicom_ct_rescale_and_window():
    ds = pydicom.dcmread(CT_SMALL)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    m = md.load_dicom(CT_SMALL, window=(40, 400))
    lo = 40 - 200
    expected = ((np.clip(hu, lo, lo + 400) - lo) / 400 * 255).astype(np.uint8)
    np.testing.assert_array_equal(m.frames[0, ..., 0], expected)
    assert m.frames.std() > 1 and m.modal == "image" and not m.pil_size_swap
    p = md.load_dicom(CT_SMALL, preset="abdomen")
    np.testing.assert_array_equal(p.frames, md.load_dicom(CT_SMALL, window=md.CT_PRESETS["abdomen"]).frames)


def test_dicom_presets_and_file_window():
    for name in ("brain", "lung", "mediastinum", "bone", "abdomen"):
        m = md.load_dicom(CT_SMALL, preset=name)
        assert m.info["window"] == md.CT_PRESETS[name]
    # MR_small carries its own WindowCenter/Width; it is used unless told otherwise
    assert md.load_dicom(MR_SMALL).info["window"] == (600.0, 1600.0)
    assert md.load_dicom(MR_SMALL, use_file_window=False).info["window"] == "minmax"
    with pytest.raises(UnsupportedInputError) as e:
        md.load_dicom(CT_SMALL, preset="kidney")
    _err(e, CT_SMALL, "unknown window preset")
    with pytest.raises(UnsupportedInputError, match="either"):
        md.load_dicom(CT_SMALL, preset="lung", window=(1, 2))


def test_dicom_monochrome1_inverted(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    a = md.load_dicom(CT_SMALL, preset="lung").frames
    b = md.load_dicom(tmp_path / "m1.dcm", preset="lung").frames
    np.testing.assert_array_equal(b, 255 - a)


def test_dicom_multiframe():
    m = md.load_dicom(PYDICOM_DATA / "examples_ybr_color.dcm")
    assert m.frames.shape == (30, 240, 320, 3) and m.modal == "3d"
    rgb2 = md.load_media(PYDICOM_DATA / "SC_rgb_rle_2frame.dcm")
    assert rgb2.frames.shape == (2, 100, 100, 3) and rgb2.frames.std() > 10


def _write_series(
    tmp_path: Path, n: int = 5, shuffle: bool = True, ipp: bool = True
) -> tuple[Path, list[float]]:
    base = pydicom.dcmread(CT_SMALL)
    d = tmp_path / "series"
    d.mkdir()
    zs = [-40.0 + 2.5 * k for k in range(n)]
    order = [3, 0, 4, 1, 2][:n] if shuffle else list(range(n))
    for file_k, k in enumerate(order):
        ds = base.copy()
        px = base.pixel_array.copy()
        px[:8, :8] = 100 * k  # mark slice k
        ds.PixelData = px.tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if ipp:
            ds.ImagePositionPatient = [0.0, 0.0, zs[k]]
        elif "ImagePositionPatient" in ds:
            del ds.ImagePositionPatient
        ds.InstanceNumber = k + 1
        ds.save_as(d / f"img{file_k:03d}.dcm")
    (d / "notes.txt").write_text("not dicom")
    return d, zs


@pytest.mark.parametrize("ipp", [True, False])
def test_dicom_series_sorted(tmp_path, ipp):
    d, _ = _write_series(tmp_path, ipp=ipp)
    m = md.load_dicom(d, window=(1000, 4000))
    assert m.frames.shape == (5, 128, 128, 1) and m.modal == "3d"
    assert m.info["sorted_by"] == ("ImagePositionPatient" if ipp else "InstanceNumber")
    marks = m.frames[:, 0, 0, 0].astype(int)
    assert list(np.argsort(marks)) == [0, 1, 2, 3, 4] and len(set(marks)) == 5  # slice k at position k
    assert md.load_media(d, window=(1000, 4000)).frames.shape == m.frames.shape


def test_dicom_series_max_slices(tmp_path):
    d, _ = _write_series(tmp_path)
    assert md.load_dicom(d, max_slices=3).frames.shape[0] == 3


# -------------------------------------------------------------------------------------------------- NIfTI


def _nifti(tmp_path: Path, data: np.ndarray, name: str = "v.nii.gz") -> Path:
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    return p


def test_nifti_hf_profile_matches_hand_computation(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.normal(0, 300, (20, 24, 16)).astype(np.float32)
    vol[:, :, 4] = -1000.0  # a constant slice
    p = _nifti(tmp_path, vol)
    m = md.load_nifti(p, profile="hf", axis=2)
    assert m.frames.shape == (16, 20, 24, 1) and not m.pil_size_swap and m.modal == "3d"
    s = vol[:, :, 0].astype(np.float64)
    expected0 = ((s - s.min()) / (s.max() - s.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(m.frames[0, ..., 0], expected0)
    assert (m.frames[4] == 0).all()  # HF: constant slice -> zeros
    k = md.load_nifti(p, profile="hf", axis="axial", num_slices=4)
    assert k.info["slices"] == [0, 5, 10, 15]  # linspace(0, 15, 4)
    assert md.load_nifti(p, profile="hf", num_slices=50).frames.shape[0] == 16  # never upsampled
    sag = md.load_nifti(p, profile="hf", axis="sagittal")
    assert sag.frames.shape == (20, 24, 16, 1)
    np.testing.assert_array_equal(md.load_nifti(p, axis=0).frames, sag.frames)


def test_nifti_original_profile(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.normal(0, 300, (20, 24, 9)).astype(np.float32)
    vol[:, :, 0] = -1000.0
    p = _nifti(tmp_path, vol)
    m = md.load_nifti(p, profile="original")
    assert m.frames.shape == (180, 20, 24, 1) and m.pil_size_swap  # 180 slices, duplicated
    assert m.info["slices"][:3] == [0, 0, 0]
    assert (m.frames[0] == 24).all()  # constant -1000 cast without normalisation wraps: -1000 mod 256 = 24
    hf = md.load_nifti(p, profile="hf")
    np.testing.assert_array_equal(m.frames[-1], hf.frames[-1])  # ordinary slices agree


def test_nifti_window_clips_before_minmax(tmp_path):
    vol = np.linspace(-1000, 1000, 20 * 20 * 3).reshape(20, 20, 3)
    p = _nifti(tmp_path, vol.astype(np.float32))
    a = md.load_nifti(p, window=(0, 400))
    s = np.clip(vol[:, :, 1], -200, 200)
    np.testing.assert_array_equal(
        a.frames[1, ..., 0], ((s - s.min()) / (s.max() - s.min()) * 255).astype(np.uint8)
    )
    np.testing.assert_array_equal(
        md.load_nifti(p, preset="brain").frames, md.load_nifti(p, window=(40, 80)).frames
    )


def test_nifti_bundled_data():
    m = md.load_nifti(NIBABEL_DATA / "anatomical.nii")
    assert m.frames.shape == (25, 33, 41, 1) and m.frames.std() > 10
    s = md.load_media(NIBABEL_DATA / "anatomical.nii", profile="original", num_slices=160)
    assert s.frames.shape[0] == 160


def test_nifti_4d_singleton_is_3d(tmp_path):
    p = _nifti(tmp_path, np.random.default_rng(0).normal(size=(16, 16, 3, 1)).astype(np.float32))
    assert md.load_nifti(p).frames.shape == (3, 16, 16, 1)


# -------------------------------------------------------------------------------------------------- video


@pytest.mark.parametrize("backend", ["decord", "av", None])
def test_video_sampling(tmp_path, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    p = tmp_path / "clip.mp4"
    written = write_mp4(p, n=30, rate=10)
    m = md.load_video(p, fps=1, max_frames=128, backend=backend)
    assert m.modal == "video" and m.frames.shape == (3, 64, 96, 3)
    assert m.timestamps == (0.0, 1.0, 2.0) and m.info["video_fps"] == 10.0
    assert np.abs(m.frames.astype(int) - written[[0, 10, 20]].astype(int)).mean() < 6  # lossy codec
    capped = md.load_video(p, fps=None, max_frames=4, backend=backend)
    assert capped.frames.shape[0] == 4
    assert capped.timestamps == pytest.approx([0.0, 0.9, 1.9, 2.9])  # linspace(0, 29, 4) -> 0, 9, 19, 29


def test_video_backends_agree(tmp_path):
    pytest.importorskip("decord")
    p = tmp_path / "clip.mp4"
    write_mp4(p, n=12, rate=4)
    a = md.load_video(p, fps=2, backend="decord")
    b = md.load_video(p, fps=2, backend="av")
    assert a.timestamps == b.timestamps
    assert (
        np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 3
    )  # same decoder, different RGB conversion


def test_sample_frames_rule():
    idx, ts = md.sample_frames(300, 30.0, 1.0, 128)
    assert idx.tolist() == list(range(0, 300, 30)) and ts.tolist() == [float(i) for i in range(10)]
    idx, _ = md.sample_frames(300, 30.0, 1.0, 4)
    assert idx.tolist() == [0, 99, 199, 299]
    idx, _ = md.sample_frames(10, 5.0, 25.0, 128)
    assert idx.tolist() == list(range(10))  # never faster than the file


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(p)
    _err(e, p, "not found")


@pytest.mark.parametrize("name", ["empty.png", "empty.dcm", "empty.nii.gz", "empty.mp4"])
def test_empty_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"")
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(p)
    _err(e, p, "empty")


def test_truncated_nii_gz(tmp_path):
    good = _nifti(tmp_path, np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(bad)
    _err(e, bad, "cannot read NIfTI")


def test_dicom_without_pixel_data():
    p = PYDICOM_DATA / "rtstruct.dcm"
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(p)
    _err(e, p, "no pixel data")


def test_truncated_dicom_pixels():
    p = PYDICOM_DATA / "MR_truncated.dcm"
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(p)
    _err(e, p, "pixel data")


def test_mixed_size_series(tmp_path):
    d, _ = _write_series(tmp_path)
    ds = pydicom.dcmread(CT_SMALL)
    small = ds.pixel_array[:64, :64].copy()
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = small.tobytes()
    ds.ImagePositionPatient = [0.0, 0.0, 100.0]
    ds.save_as(d / "odd.dcm")
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(d)
    _err(e, d, "mixes slice sizes", "(64, 64)", "(128, 128)")


def test_study_folder_picks_largest_series_or_the_named_one(tmp_path, caplog):
    d, _ = _write_series(tmp_path)
    ds = pydicom.dcmread(d / "img000.dcm")
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.save_as(d / "other.dcm")
    with caplog.at_level("WARNING", logger="hulurt.media"):
        m = md.load_media(d, window=(1000, 4000))
    assert m.frames.shape[0] == 5 and m.info["series_uid"] == pydicom.dcmread(d / "img001.dcm").SeriesInstanceUID
    notes = [r.getMessage() for r in caplog.records if "DICOM series here" in r.getMessage()]
    assert len(notes) == 1 and "using the largest" in notes[0] and "1.2.3.4" in notes[0] and "\n" not in notes[0]
    one = md.load_media(d, series="1.2.3.4", window=(1000, 4000))
    assert one.frames.shape[0] == 1 and one.info["series_uid"] == "1.2.3.4"
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(d, series="9.9")
    _err(e, d, "no series '9.9'", "1.2.3.4 (1 files)")


def test_study_folder_equal_series_refused(tmp_path):
    d, _ = _write_series(tmp_path, n=2, shuffle=False)
    for k in range(2):
        ds = pydicom.dcmread(d / f"img{k:03d}.dcm")
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.save_as(d / f"other{k}.dcm")
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(d)
    _err(e, d, "2 DICOM series of equal size", "--series")


def test_4d_nifti(tmp_path):
    p = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(p)
    _err(e, p, "(128, 96, 24, 2)", "3-D volume")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_voxels(tmp_path, bad):
    vol = np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32)
    vol[3, 4, 1] = bad
    vol[5, 5, 2] = bad
    p = _nifti(tmp_path, vol)
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(p)
    _err(e, p, "2 NaN or infinite voxels")


def test_one_pixel_image(tmp_path):
    p = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p)
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(p)
    _err(e, p, "1x1 pixels")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT: what a decompression bomb
    looks like to a reader before it decodes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "side", [20000, 60000]
)  # 400 Mpx (over our limit) and 3.6 Gpx (Pillow's own bomb error)
def test_decompression_bomb(tmp_path, side):
    p = tmp_path / "bomb.png"
    _png_header_only(p, side, side)
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(p)
    _err(e, p)
    assert "limit" in str(e.value) or "decompression bomb" in str(e.value)


@pytest.mark.parametrize("name", ["broken.mp4", "broken.avi"])
def test_unreadable_video(tmp_path, name):
    _av()
    p = tmp_path / name
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(p)
    _err(e, p, "cannot decode video")


def test_truncated_video(tmp_path):
    p = tmp_path / "clip.mp4"
    write_mp4(p, n=20)
    raw = p.read_bytes()
    q = tmp_path / "cut.mp4"
    q.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(q)
    _err(e, q)


@pytest.mark.parametrize("name", ["report.pdf", "scan.xyz", "noext"])
def test_unsupported_extension(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"%PDF-1.4 hello")
    with pytest.raises(UnsupportedInputError) as e:
        md.load_media(p)
    _err(e, p, "unsupported file type")


def test_corrupt_png(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(md.CorruptInputError) as e:
        md.load_media(p)
    _err(e, p, "cannot decode image")


def test_extensionless_dicom_detected(tmp_path):
    p = tmp_path / "IM0001"
    shutil.copy(CT_SMALL, p)
    assert md.kind_of(p) == "dicom"
    assert md.load_media(p).frames.shape == (1, 128, 128, 1)


def test_gzip_nifti_name_not_confused(tmp_path):
    p = tmp_path / "v.nii.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(md.CorruptInputError):
        md.load_media(p)


def test_video_trim(tmp_path):
    p = tmp_path / "clip.mp4"
    write_mp4(p, n=30, rate=10)
    m = md.load_video(p, fps=2, start_time=1.0, end_time=2.0, backend="av")
    assert m.timestamps == (1.0, 1.5)
    with pytest.raises(UnsupportedInputError) as e:
        md.load_video(p, start_time=5.0)
    _err(e, p, "no frames to sample")


def test_sample_frames_hf_rule():
    # 29.97 fps: HF stamps are k / fps (0, 1, 2, ...); the original rule steps 29 frames (0.97 s)
    idx, ts = md.sample_frames_hf(300, 29.97, 1.0, 128)
    assert ts.tolist() == [float(k) for k in range(11)] and idx.tolist()[:3] == [0, 29, 59]
    o_idx, o_ts = md.sample_frames(300, 29.97, 1.0, 128)
    assert o_idx.tolist()[:3] == [0, 29, 58] and o_ts[1] == pytest.approx(29 / 29.97)
    # cap: linspace over the sampled list (HF) vs over the whole clip (original)
    idx, ts = md.sample_frames_hf(300, 30.0, 1.0, 4)
    assert ts.tolist() == [0.0, 3.0, 6.0, 9.0] and idx.tolist() == [0, 90, 180, 270]
    assert md.sample_frames(300, 30.0, 1.0, 4)[0].tolist() == [0, 99, 199, 299]
    idx, ts = md.sample_frames_hf(100, 10.0, 2.0, 128, start_time=2.0, end_time=4.0)
    assert ts.tolist() == [2.0, 2.5, 3.0, 3.5] and idx.tolist() == [20, 25, 30, 35]


def test_video_profiles_render_different_stamps(tmp_path):
    p = tmp_path / "clip.mp4"
    write_mp4(p, n=30, rate=10)
    hf = md.load_video(p, fps=1, max_frames=2, backend="av")
    orig = md.load_video(p, fps=1, max_frames=2, backend="av", profile="original")
    assert hf.timestamps == (0.0, 2.0) and orig.timestamps == (0.0, 2.9)
    with pytest.raises(UnsupportedInputError, match="video profile"):
        md.load_video(p, profile="ffmpeg")


_MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff",
    ".tif": b"II*\x00",
    ".gif": b"GIF89a",
    ".dcm": b"\x00" * 128 + b"DICM",
    ".nii": b"\x5c\x01\x00\x00",
    ".nii.gz": b"\x1f\x8b",
    ".mp4": b"\x00\x00\x00\x18ftypmp42",
}


@pytest.mark.parametrize("ext", sorted(_MAGIC))
def test_garbage_after_magic_is_always_unsupported_input(tmp_path, ext, capfd):
    """Random bytes behind a valid signature: every reader fails with our error type, one line, and no native
    library noise on stderr (decord/ffmpeg log there themselves)."""
    if ext == ".mp4":
        _av()
    rng = np.random.default_rng(len(ext))
    for k in range(3):
        p = tmp_path / f"g{k}{ext}"
        p.write_bytes(_MAGIC[ext] + rng.integers(0, 256, 200 + 700 * k, dtype=np.uint8).tobytes())
        with pytest.raises(UnsupportedInputError) as e:
            md.load_media(p)
        _err(e, p)
    assert capfd.readouterr().err == ""
