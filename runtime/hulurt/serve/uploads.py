"""Uploads of one request: base64 data URLs decoded into a private temporary directory (mode 0700) that is
deleted when the request ends, whatever happens. A zip becomes a DICOM series directory (members flattened,
so no path in the archive can escape the directory). Sizes are checked before anything large is written or
decoded: the upload itself, a zip's declared and actual uncompressed bytes, a NIfTI's voxel count from its
header."""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hulurt.media import DICOM_EXTS, IMAGE_EXTS, NIFTI_EXTS, VIDEO_EXTS
from hulurt.serve.schemas import APIError, Part, bad

_MIME_EXT = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/bmp": ".bmp", "image/tiff": ".tif",
    "image/webp": ".webp", "application/dicom": ".dcm", "image/dicom": ".dcm",
}
_MAX_ZIP_MEMBERS = 10_000
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Upload:
    path: Path  # the file (or, for a zip, the extracted series directory) inside the workspace
    display: str  # what the client calls it: its filename, or the JSON path of an image_url part
    kind: str  # "image" | "dicom" | "nifti" | "video"


def too_large(what: str, size: int, limit: int, param: str | None = None) -> APIError:
    return APIError(413, f"{what}: {size / 2**20:.1f} MiB exceeds this server's limit of {limit / 2**20:.1f} MiB",
                    param=param, code="payload_too_large")


def decode_data_url(url: str, where: str, display: str) -> tuple[str, bytes]:
    """'data:<mime>;base64,<payload>' -> (mime, bytes); anything else is a 400 that says what is expected."""
    if url.startswith(("http://", "https://")):
        raise bad(f"{display}: this server does not fetch URLs; send the file inline as a base64 data: URL "
                  "(data:image/png;base64,...)", where)
    if not url.startswith("data:") or "," not in url:
        raise bad(f"{display}: expected a base64 data: URL (data:<mime type>;base64,<data>); got "
                  f"{url[:32]!r}...", where)
    head, payload = url[5:].split(",", 1)
    fields = head.split(";")
    if "base64" not in fields[1:]:
        raise bad(f"{display}: the data: URL must be base64-encoded (data:<mime type>;base64,...)", where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad(f"{display}: invalid base64 in the data: URL ({e})", where) from e
    if not data:
        raise bad(f"{display}: the file is empty (0 bytes)", where)
    return fields[0].strip().lower(), data


def _kind_of_name(name: str) -> str | None:
    low = name.lower()
    if low.endswith(NIFTI_EXTS):
        return "nifti"
    if low.endswith(".zip"):
        return "zip"
    suffix = os.path.splitext(low)[1]
    for kind, exts in (("image", IMAGE_EXTS), ("dicom", DICOM_EXTS), ("video", VIDEO_EXTS)):
        if suffix in exts:
            return kind
    return None


class Workspace:
    """The private temporary directory of one request. close() removes it; it is idempotent."""

    def __init__(self, root: Path | None, max_upload_bytes: int, max_volume_bytes: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="req-", dir=root))  # 0700, unique
        self.max_upload = max_upload_bytes
        self.max_volume = max_volume_bytes
        self._names: dict[str, str] = {}  # workspace path -> the client's name, to rewrite error messages
        self._n = 0

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Workspace:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client_names(self, message: str) -> str:
        """Error text with workspace paths replaced by the names the client gave (longest first)."""
        for path in sorted(self._names, key=len, reverse=True):
            message = message.replace(path, self._names[path])
        return message.replace(str(self.dir) + os.sep, "").replace(str(self.dir), "upload")

    def _slot(self) -> Path:
        self._n += 1
        d = self.dir / str(self._n)
        d.mkdir()
        return d

    def save(self, part: Part) -> Upload:
        """Decode one image_url / file part into the workspace."""
        if part.kind == "file":
            assert part.filename is not None
            display = os.path.basename(part.filename.replace("\\", "/")) or "upload"
            where = f"{part.where}.file.file_data"
        else:
            display = f"{part.where}.image_url"
            where = f"{part.where}.image_url.url"
        # base64 is 4/3 of the bytes: refuse before decoding what cannot fit
        if len(part.data_url) * 3 // 4 > self.max_upload + 3:
            raise too_large(display, len(part.data_url) * 3 // 4, self.max_upload, where)
        mime, data = decode_data_url(part.data_url, where, display)
        if len(data) > self.max_upload:
            raise too_large(display, len(data), self.max_upload, where)
        if part.kind == "file":
            kind = _kind_of_name(display)
            if kind is None:
                raise bad(f"{display}: unsupported file type; expected a NIfTI volume (.nii, .nii.gz), a .zip of one "
                          f"DICOM series, a DICOM file {DICOM_EXTS}, an image {IMAGE_EXTS} or a video {VIDEO_EXTS}",
                          where)
            safe = _SAFE.sub("_", display).lstrip(".") or "upload"
        else:
            ext = _MIME_EXT.get(mime)
            if ext is None and len(data) >= 132 and data[128:132] == b"DICM":
                ext = ".dcm"
            if ext is None:
                raise bad(f"{display}: unsupported image type {mime or '(none)'!r}; expected "
                          f"{sorted(set(_MIME_EXT))} as a base64 data: URL", where)
            kind = "dicom" if ext == ".dcm" else "image"
            safe = "image" + ext
        slot = self._slot()
        if kind == "zip":
            return self._unzip(data, slot, display, where)
        path = slot / safe
        path.write_bytes(data)
        self._names[str(path)] = display
        return Upload(path, display, kind)

    def _unzip(self, data: bytes, slot: Path, display: str, where: str) -> Upload:
        """A zip of one DICOM series -> a directory of its files (flattened; folders and dot files dropped)."""
        src = slot / "upload.zip"
        src.write_bytes(data)
        series = slot / "series"
        series.mkdir()
        try:
            with zipfile.ZipFile(src) as z:
                members = [i for i in z.infolist() if not i.is_dir()]
                members = [i for i in members if not _hidden(i.filename)]
                if not members:
                    raise bad(f"{display}: the zip holds no files; expected the files of one DICOM series", where)
                if len(members) > _MAX_ZIP_MEMBERS:
                    raise bad(f"{display}: the zip holds {len(members)} files; at most {_MAX_ZIP_MEMBERS}", where)
                declared = sum(i.file_size for i in members)
                if declared > self.max_volume:
                    raise too_large(f"{display} (uncompressed)", declared, self.max_volume, where)
                written = 0
                used: set[str] = set()
                for k, info in enumerate(members):
                    name = _SAFE.sub("_", os.path.basename(info.filename)).lstrip(".") or "file"
                    if name in used:  # the same name in two folders of the archive: keep both
                        name = f"{k:05d}_{name}"
                    used.add(name)
                    with z.open(info) as fin, open(series / name, "wb") as fout:
                        while True:  # count real bytes: a header's file_size can lie
                            buf = fin.read(1 << 20)
                            if not buf:
                                break
                            written += len(buf)
                            if written > self.max_volume:
                                raise too_large(f"{display} (uncompressed)", written, self.max_volume, where)
                            fout.write(buf)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
            raise bad(f"{display}: not a readable zip archive ({e}); expected a .zip of one DICOM series", where) from e
        finally:
            src.unlink(missing_ok=True)
        self._names[str(series)] = display
        return Upload(series, display, "dicom")

    def check_volume(self, up: Upload) -> None:
        """A NIfTI's decoded size from its header (float64 voxels, as hulurt.media reads them) before decoding."""
        if up.kind != "nifti":
            return
        try:
            import nibabel as nib
        except ImportError:
            return  # hulurt.media says which extra is missing when it reads the file
        try:
            img: Any = nib.load(str(up.path))  # typed as FileBasedImage; a NIfTI image has a shape
            shape = img.shape
        except Exception as e:
            raise bad(f"{up.display}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
        voxels = 1
        for s in shape:
            voxels *= int(s)
        if voxels * 8 > self.max_volume:
            raise too_large(f"{up.display}: decoded volume {tuple(shape)}", voxels * 8, self.max_volume)


def _hidden(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    hidden = any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)
    return hidden or parts[-1].upper() == "DICOMDIR"
