"""Generated test inputs for the readers: hostile DICOM and NIfTI files written as streams (the tests never hold
the volumes they declare) and small DICOM series."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
MiB = 1 << 20


def deflate_bomb(path: Path, frames: int = 32, side: int = 4096) -> Path:
    """A Deflated Explicit VR Little Endian file declaring frames x side^2 16-bit pixels of zeros: the
    ~1 GiB of pixel data is streamed through zlib, so the file is about 1 MB and the test never holds it."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(head, meta)
    body = io.BytesIO()
    fp = pydicom.filebase.DicomFileLike(body)
    fp.is_implicit_VR, fp.is_little_endian = False, True
    pydicom.filewriter.write_dataset(fp, ds)  # header elements only
    n_bytes = frames * side * side * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + head.getvalue())
        f.write(comp.compress(body.getvalue() + pixel_header))
        zeros = bytes(16 * MiB)
        left = n_bytes
        while left:
            f.write(comp.compress(zeros[: min(left, len(zeros))]))
            left -= min(left, len(zeros))
        f.write(comp.flush())
    return path


def nifti_header(shape: tuple[int, ...], dtype: type) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4  # 348-byte header + empty extension flag


def zero_nii_gz(path: Path, shape: tuple[int, int, int], dtype: type = np.uint8, cut: int | None = None) -> Path:
    """A .nii.gz of zeros written slab by slab (the test never holds the volume); `cut` keeps only that many
    compressed bytes (a file that lies about its size)."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(nifti_header(shape, dtype))
        slab = np.zeros(shape[0] * shape[1] * 8, dtype=dtype).tobytes()
        for _ in range(shape[2] // 8):
            f.write(slab)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    return path


def series(d: Path, n: int, uid: str | None = None, side: int = 64) -> Path:
    base = pydicom.dcmread(PYDICOM_DATA / "CT_small.dcm")
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for k in range(n):
        ds = base.copy()
        px = rng.integers(0, 2000, (side, side), dtype=np.int16)
        px[:4, :4] = 10 * k
        ds.Rows = ds.Columns = side
        ds.PixelData = px.tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 1.5 * k]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if uid is not None:
            ds.SeriesInstanceUID = uid
        ds.save_as(d / f"{uid or 'a'}-{(k * 7919) % 1000:04d}.dcm")
    return d
