"""Make onnxruntime-gpu small enough to carry to a one-GPU machine in two device calls (docs/gpu.md).

The onnxruntime-gpu 1.31.1 wheel is 256 MB; 218 MB of its CUDA provider library is the `.nv_fatbin` section:
machine code (SASS) for sm_75, 80, 86, 89, 90 and 120, no PTX. A GPU loads only the images of its own major
architecture (SASS is not portable across majors), so for an H200 (sm_90) everything else is dead weight.
This script rewrites each fatbin container of that library to hold only the entries for one major
architecture, byte for byte as they were, so each container has the form nvcc gives for a single-architecture
build; the section keeps its size and place (the tail of each shortened container is zeros, which compress to
nothing), and no byte outside `.nv_fatbin` changes. Containers with no entry for that architecture are left as
they were (their kernels cannot run on such a GPU with or without this step).

    python3 scripts/ort_slim.py WHEEL --sm 90 --out .whl --part 58M
        -> .whl/ort-slim.tar.xz.part-00, -01, ...; .whl/ort-slim.sha256, .whl/ort-slim.name, .whl/ort-slim.json

The archive holds the wheel's `onnxruntime/` package and its dist-info as `pip install --target` lays them
out; the device extracts it into its site folder (scripts/gpu_bench.sh). The JSON records what was kept and
dropped per architecture and the sha256 of every file. Standard library only, so it runs with any python3.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import re
import struct
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

FATBIN_MAGIC = 0xBA55ED50  # fatbin container header: magic u32, version u16, header size u16, entries size u64
KIND = {1: "ptx", 2: "sass"}
CUDA_LIB = "onnxruntime/capi/libonnxruntime_providers_cuda.so"


class SlimError(Exception):
    """A file that is not what this script expects; the message names it."""


def elf_section(data: bytes | bytearray, name: str, what: str) -> tuple[int, int]:
    """(file offset, size) of section `name` of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SlimError(f"{what}: expected a 64-bit little-endian ELF file, found {bytes(data[:6])!r}")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        sh_name, = struct.unpack_from("<I", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 0x18)
        return sh_name, sh_offset, sh_size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        sh_name, off, size = header(i)
        end = data.index(b"\0", str_off + sh_name)
        if data[str_off + sh_name:end].decode() == name:
            return off, size
    raise SlimError(f"{what}: no {name} section")


def _entries(data: bytes | bytearray, start: int, end: int, what: str) -> list[tuple[int, int, int, int]]:
    """(offset, total size, kind, arch) of each entry of the container whose entries span [start, end)."""
    out = []
    e = start
    while e < end:
        kind, _ver, ehsz, psz = struct.unpack_from("<HHIQ", data, e)
        arch, = struct.unpack_from("<I", data, e + 28)
        if ehsz < 64 or e + ehsz + psz > end:
            raise SlimError(f"{what}: fatbin entry at {e:#x} overruns its container (header {ehsz}, size {psz})")
        out.append((e, ehsz + psz, kind, arch))
        e += ehsz + psz
    return out


def loadable(kind: int, arch: int, sm: int) -> bool:
    """Can a GPU of compute capability `sm` use this entry? SASS of the same major and a minor not above the
    GPU's (sm_80 SASS runs on sm_86, never on sm_90); PTX of any architecture not above the GPU's (the driver
    compiles it). Kinds this script does not know are kept."""
    if kind == 2:
        return arch // 10 == sm // 10 and arch <= sm
    if kind == 1:
        return arch <= sm
    return True


def compact_fatbins(data: bytearray, sm: int, what: str) -> dict[str, Any]:
    """Rewrite, in place, each fatbin container of `data` (an ELF shared library) to its entries that a GPU of
    compute capability `sm` can load (`loadable`). Returns counts and bytes kept/dropped per (kind, arch)."""
    off, size = elf_section(data, ".nv_fatbin", what)
    pos, end = off, off + size
    kept: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    n_kept: Counter[str] = Counter()
    n_dropped: Counter[str] = Counter()
    containers = untouched = 0
    while pos < end:
        magic, _ver, hsz, fsz = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            if any(data[pos:pos + 8]):
                raise SlimError(f"{what}: expected a fatbin container or zero padding at {pos:#x} in .nv_fatbin, "
                                f"found {bytes(data[pos:pos + 8]).hex()}")
            pos += 8
            continue
        containers += 1
        start, cend = pos + hsz, pos + hsz + fsz
        if cend > end:
            raise SlimError(f"{what}: fatbin container at {pos:#x} runs past .nv_fatbin")
        entries = _entries(data, start, cend, what)
        keep = [x for x in entries if loadable(x[2], x[3], sm)]
        if not keep:
            untouched += 1
        else:
            body = b"".join(bytes(data[e:e + n]) for e, n, _, _ in keep)
            data[start:start + len(body)] = body
            data[start + len(body):cend] = bytes(cend - start - len(body))
            struct.pack_into("<Q", data, pos + 8, len(body))
            for _, n, kind, arch in entries:
                key = f"{KIND.get(kind, kind)}_{arch}"
                if loadable(kind, arch, sm):
                    kept[key] += n
                    n_kept[key] += 1
                else:
                    dropped[key] += n
                    n_dropped[key] += 1
        pos = cend
    if containers == 0:
        raise SlimError(f"{what}: .nv_fatbin holds no fatbin container")
    return {"sm": sm, "containers": containers, "containers_without_sm": untouched,
            "kept_bytes": dict(sorted(kept.items())), "dropped_bytes": dict(sorted(dropped.items())),
            "kept_entries": dict(sorted(n_kept.items())), "dropped_entries": dict(sorted(n_dropped.items()))}


def check_compacted(orig: bytes, new: bytes | bytearray, sm: int, what: str) -> None:
    """Every byte outside .nv_fatbin is unchanged, and each container now holds exactly the original entries
    that `sm` can load, in their order (or is unchanged when it had none)."""
    off, size = elf_section(orig, ".nv_fatbin", what)
    if len(orig) != len(new) or orig[:off] != new[:off] or orig[off + size:] != new[off + size:]:
        raise SlimError(f"{what}: bytes outside .nv_fatbin changed")
    pos = off
    while pos < off + size:
        magic, _v, hsz, fsz = struct.unpack_from("<IHHQ", orig, pos)
        if magic != FATBIN_MAGIC:
            pos += 8
            continue
        entries = _entries(orig, pos + hsz, pos + hsz + fsz, what)
        want = [orig[e:e + n] for e, n, k, a in entries if loadable(k, a, sm)]
        got_fsz, = struct.unpack_from("<Q", new, pos + 8)
        got = [new[e:e + n] for e, n, _, _ in _entries(new, pos + hsz, pos + hsz + got_fsz, what)]
        if want and got != want or not want and new[pos:pos + hsz + fsz] != orig[pos:pos + hsz + fsz]:
            raise SlimError(f"{what}: container at {pos:#x} differs from the expected compaction")
        pos += hsz + fsz


def slim_wheel(wheel: Path, sm: int, out: Path, part: int, level: int = 6) -> dict[str, Any]:
    """The slim archive of `wheel`, split into parts of at most `part` bytes, plus its record (see module doc)."""
    if not zipfile.is_zipfile(wheel):
        raise SlimError(f"{wheel}: expected an onnxruntime-gpu wheel (a zip file)")
    buf = io.BytesIO()
    files: dict[str, str] = {}
    stats: dict[str, Any] = {}
    with zipfile.ZipFile(wheel) as z, tarfile.open(fileobj=buf, mode="w") as tar:
        names = z.namelist()
        if CUDA_LIB not in names:
            raise SlimError(f"{wheel}: expected {CUDA_LIB} in the wheel (an onnxruntime-gpu wheel); not found")
        for info in z.infolist():
            if info.is_dir() or not (info.filename.startswith("onnxruntime/") or ".dist-info/" in info.filename):
                continue
            blob = z.read(info)
            if info.filename == CUDA_LIB:
                new = bytearray(blob)
                stats = compact_fatbins(new, sm, f"{wheel}:{CUDA_LIB}")
                check_compacted(blob, new, sm, f"{wheel}:{CUDA_LIB}")
                blob = bytes(new)
            ti = tarfile.TarInfo(info.filename)
            ti.size = len(blob)
            ti.mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
            ti.mtime = 0
            tar.addfile(ti, io.BytesIO(blob))
            files[info.filename] = hashlib.sha256(blob).hexdigest()
    archive = lzma.compress(buf.getvalue(), preset=level)
    out.mkdir(parents=True, exist_ok=True)
    name = "ort-slim.tar.xz"
    for old in out.glob(f"{name}.part-*"):
        old.unlink()
    parts = []
    for i in range(0, len(archive), part):
        p = out / f"{name}.part-{i // part:02d}"
        p.write_bytes(archive[i:i + part])
        parts.append(p.name)
    digest = hashlib.sha256(archive).hexdigest()
    (out / "ort-slim.sha256").write_text(digest + "\n")
    (out / "ort-slim.name").write_text(name + "\n")
    record = {"wheel": wheel.name, "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
              "archive": name, "archive_sha256": digest, "archive_bytes": len(archive), "tar_bytes": buf.tell(),
              "parts": parts, "fatbin": stats, "files": files}
    (out / "ort-slim.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"--part {text!r}: expected a size such as 58M")
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--sm", type=int, default=90, help="the GPU's compute capability, e.g. 90 for H100/H200")
    ap.add_argument("--out", type=Path, default=Path(".whl"))
    ap.add_argument("--part", type=_size, default=_size("58M"), help="largest part (one device call carries one)")
    ap.add_argument("--level", type=int, default=6, help="xz preset")
    a = ap.parse_args(argv)
    try:
        rec = slim_wheel(a.wheel, a.sm, a.out, a.part, a.level)
    except (SlimError, OSError) as e:
        print(f"ort_slim: {e}", file=sys.stderr)
        return 2
    fb = rec["fatbin"]
    print(f"{rec['wheel']}: sm_{a.sm}: kept {sum(fb['kept_bytes'].values()) / 1e6:.1f} MB, dropped "
          f"{sum(fb['dropped_bytes'].values()) / 1e6:.1f} MB {sorted(fb['dropped_bytes'])} in {fb['containers']} "
          f"containers ({fb['containers_without_sm']} with nothing sm_{a.sm} can load, left as they were); "
          f"archive {rec['archive_bytes'] / 2**20:.1f} MiB in {len(rec['parts'])} part(s): {', '.join(rec['parts'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
