"""DICOM headers without pixels: what a file declares (frames, rows, columns, samples, bits), read so that a
hostile file costs little, and pydicom's own log output kept off the console.

A Deflate-compressed file (transfer syntax 1.2.840.10008.1.2.1.99) is inflated by pydicom as a whole, pixels
included, even with stop_before_pixels; so here it is inflated only as far as the pixel data tag to read its
header, and its full inflated size is counted (without keeping it) against the limit before pydicom sees it.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from hulurt.media.common import CorruptInputError, ReadLimits, log

DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_PIXEL_TAG_BYTES = b"\xe0\x7f\x10\x00"  # (7FE0,0010) in little endian
_HEADER_MAX = 64 << 20  # inflated bytes searched for the pixel data tag before giving up


@dataclass(frozen=True)
class Declared:
    """What a DICOM header says about its pixels."""

    frames: int
    rows: int
    cols: int
    samples: int  # SamplesPerPixel (3 for RGB/YBR)
    bits: int  # BitsAllocated
    photometric: str
    has_pixels: bool

    @property
    def color(self) -> bool:
        return self.samples == 3 or self.photometric == "PALETTE COLOR"

    def describe(self) -> str:
        return f"{self.frames} x {self.rows}x{self.cols} x {self.samples} sample(s) x {self.bits}-bit"


def _int(ds: Any, name: str, default: int, path: object) -> int:
    v = ds.get(name, None)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except (TypeError, ValueError) as e:
        raise CorruptInputError(path, f"DICOM header {name} = {v!r}; expected an integer ({e})") from e


def declared(ds: Any, path: object, has: bool = True) -> Declared:
    return Declared(
        frames=_int(ds, "NumberOfFrames", 1, path) or 1,
        rows=_int(ds, "Rows", 0, path),
        cols=_int(ds, "Columns", 0, path),
        samples=_int(ds, "SamplesPerPixel", 1, path),
        bits=_int(ds, "BitsAllocated", 16, path),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        has_pixels=has,
    )


def check_declared(d: Declared, n_decoded: int, limits: ReadLimits, path: object) -> None:
    """Refuse before decoding: `n_decoded` of the declared frames will be decoded (after sampling)."""
    if not d.has_pixels:
        raise CorruptInputError(path, "DICOM file has no pixel data (e.g. a structured report or DICOMDIR)")
    if d.bits not in (1, 8, 16, 32, 64):
        raise CorruptInputError(path, f"DICOM header BitsAllocated = {d.bits}; expected 1, 8, 16, 32 or 64")
    limits.check(path, n_decoded, d.rows, d.cols, d.samples, what=f"declares {d.describe()}; decoding")


@contextlib.contextmanager
def pydicom_log_captured(path: object) -> Iterator[None]:
    """pydicom logs each failing decoder's traceback on its 'pydicom' logger; keep those records off the console
    (our error is one line) and pass their first line to our log, visible with -v."""
    lg = logging.getLogger("pydicom")
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = _Keep()
    old_propagate = lg.propagate
    lg.addHandler(keep)
    lg.propagate = False
    try:
        yield
    finally:
        lg.removeHandler(keep)
        lg.propagate = old_propagate
        for r in records:
            log.info("%s: pydicom: %s", path, str(r.getMessage()).splitlines()[0] if r.getMessage() else "")


def _meta_and_offset(path: Path) -> tuple[Any, int]:
    """The file meta group and the byte offset where the dataset begins (just after the meta group)."""
    from pydicom.filereader import read_dataset

    with open(path, "rb") as f:
        head = f.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None, 0
        meta = read_dataset(f, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag.group != 2)
        return meta, f.tell()


def _inflated_header(path: Path, offset: int, limits: ReadLimits) -> tuple[Any, bool]:
    """Read a Deflate file's dataset up to the pixel data, inflating only that far, and check what it declares
    (every frame: pydicom will inflate them all); then count the whole inflated size without keeping it and
    refuse a file that inflates to more than its header declares (plus 64 MiB for other elements)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    d = zlib.decompressobj(-zlib.MAX_WBITS)
    buf = bytearray()
    total = 0
    limit_bytes = limits.max_pixels * 8 + _HEADER_MAX  # until the header is known: 64-bit samples at most
    header = None
    has_pixels = False
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 16)
            data = d.unconsumed_tail + chunk if d.unconsumed_tail else chunk
            while True:
                try:
                    out = d.decompress(data, 1 << 20)
                except zlib.error as e:
                    raise CorruptInputError(path, f"Deflate-compressed DICOM does not inflate: {e}") from e
                total += len(out)
                if header is None:
                    start = max(0, len(buf) - 3)
                    buf += out
                    pos = buf.find(_PIXEL_TAG_BYTES, start)
                    if pos >= 0 or len(buf) > _HEADER_MAX:
                        # a tag-like byte run inside an earlier value would cut the header short: read_dataset
                        # then fails and the file is refused as unreadable, never read past its limits
                        fp = DicomBytesIO(bytes(buf[:pos] if pos >= 0 else buf))
                        try:
                            header = read_dataset(cast(BinaryIO, fp), is_implicit_VR=False, is_little_endian=True)
                        except Exception as e:  # noqa: BLE001 - pydicom raises many types on junk
                            raise CorruptInputError(path, f"cannot read the inflated DICOM header: {e}") from e
                        has_pixels = pos >= 0
                        buf = bytearray()
                        dec = declared(header, path, has_pixels)
                        if has_pixels:
                            check_declared(dec, dec.frames, limits, path)
                            limit_bytes = dec.frames * dec.rows * dec.cols * dec.samples * max(dec.bits, 8) // 8
                            limit_bytes += _HEADER_MAX
                if total > limit_bytes:
                    raise CorruptInputError(
                        path,
                        f"Deflate-compressed DICOM inflates to more than {limit_bytes:,} bytes, more than its "
                        "header declares; refused before decoding",
                    )
                data = d.unconsumed_tail
                if not data:
                    break
            if not chunk or d.eof:
                break
    if header is None:
        fp = DicomBytesIO(bytes(buf))
        try:
            header = read_dataset(cast(BinaryIO, fp), is_implicit_VR=False, is_little_endian=True)
        except Exception as e:  # noqa: BLE001
            raise CorruptInputError(path, f"cannot read the inflated DICOM header: {e}") from e
    return header, has_pixels


def read_header(pydicom: Any, path: Path, limits: ReadLimits) -> tuple[Any, bool, bool]:
    """(header dataset without pixel values, deflated?, has pixel data?); no pixel value is read or decoded."""
    from pydicom.filereader import read_partial

    meta, offset = _meta_and_offset(path)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
        # samples x 8 bytes (64-bit floats at most) plus room for the header itself
        header, has = _inflated_header(path, offset, limits)
        header.file_meta = pydicom.dataset.FileMetaDataset(meta)
        return header, True, has
    seen: list[int] = []

    def at_pixels(tag: Any, vr: Any, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            seen.append(int(tag))
            return True
        return False

    with open(path, "rb") as f:
        ds = read_partial(f, stop_when=at_pixels, force=True)
    return ds, False, bool(seen)
