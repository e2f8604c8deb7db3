"""The tools that carry onnxruntime-gpu to the one-GPU machine (docs/gpu.md): scripts/ort_slim.py cuts the CUDA
provider's fatbins to what one GPU architecture can load, on a real multi-architecture library that nvcc builds
here; scripts/gpu_smoke.py, the gate run on the device before measuring, on the CPU provider.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: fatbin compaction check NOT run")

KERNELS = {
    "a.cu": "__global__ void add(float* a, const float* b, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x;"
            " if (i < n) a[i] += b[i]; }\n"
            "extern \"C\" void launch_a(float* a, const float* b, int n) { add<<<(n + 255) / 256, 256>>>(a, b, n); }\n",
    "b.cu": "__global__ void scale(float* a, float s, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x;"
            " if (i < n) a[i] *= s; }\n"
            "extern \"C\" void launch_b(float* a, int n) { scale<<<(n + 255) / 256, 256>>>(a, 2.f, n); }\n",
}
# SASS for three majors plus compute_80 PTX: an sm_90 GPU can load the sm_90 SASS and (by JIT) the PTX
GENCODE = ["arch=compute_80,code=sm_80", "arch=compute_80,code=compute_80", "arch=compute_90,code=sm_90",
           "arch=compute_100,code=sm_100"]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


slim = _script("ort_slim")


@pytest.fixture(scope="module")
def fatlib(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("fatbin")
    for name, src in KERNELS.items():
        (d / name).write_text(src)
    cmd = [str(NVCC), "-shared", "-Xcompiler", "-fPIC", *[x for g in GENCODE for x in ("-gencode", g)],
           *KERNELS, "-o", "libk.so"]
    r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    return (d / "libk.so").read_bytes()


def _entries(data: bytes | bytearray) -> list[list[tuple[int, int, bytes]]]:
    """Per container, (kind, arch, entry bytes): an independent walk of .nv_fatbin for the assertions."""
    off, size = slim.elf_section(data, ".nv_fatbin", "test")
    out, pos = [], off
    while pos < off + size:
        magic, _v, hsz, fsz = struct.unpack_from("<IHHQ", data, pos)
        if magic != 0xBA55ED50:
            pos += 8
            continue
        e, cont = pos + hsz, []
        while e < pos + hsz + fsz:
            kind, _, ehsz, psz = struct.unpack_from("<HHIQ", data, e)
            cont.append((kind, struct.unpack_from("<I", data, e + 28)[0], bytes(data[e:e + ehsz + psz])))
            e += ehsz + psz
        out.append(cont)
        pos += hsz + fsz
    return out


@needs_nvcc
def test_compaction_keeps_exactly_what_sm90_can_load(fatlib: bytes) -> None:
    before = _entries(fatlib)
    assert {(k, a) for c in before for k, a, _ in c} == {(2, 80), (1, 80), (2, 90), (2, 100)}  # nvcc made all four
    new = bytearray(fatlib)
    stats = slim.compact_fatbins(new, 90, "libk.so")
    slim.check_compacted(fatlib, new, 90, "libk.so")
    assert len(new) == len(fatlib) and new != fatlib
    after = _entries(new)
    assert len(after) == len(before) == stats["containers"]
    for b, a in zip(before, after, strict=True):  # each container: the loadable entries, in order, byte for byte
        assert a == [x for x in b if (x[0], x[1]) in {(2, 90), (1, 80)}]
    assert set(stats["dropped_bytes"]) == {"sass_80", "sass_100"} and set(stats["kept_bytes"]) == {"sass_90", "ptx_80"}
    again = bytearray(new)
    slim.compact_fatbins(again, 90, "libk.so")
    assert again == new  # a compacted library is already compact


@needs_nvcc
def test_the_check_catches_a_wrong_rewrite(fatlib: bytes) -> None:
    new = bytearray(fatlib)
    slim.compact_fatbins(new, 90, "libk.so")
    kind, arch, blob = _entries(new)[0][0]
    i = bytes(new).index(blob) + len(blob) - 1
    new[i] ^= 0xFF  # one byte of a kept entry
    with pytest.raises(slim.SlimError, match="container at .* differs"):
        slim.check_compacted(fatlib, new, 90, "libk.so")
    outside = bytearray(fatlib)
    outside[100] ^= 0xFF
    with pytest.raises(slim.SlimError, match="outside .nv_fatbin changed"):
        slim.check_compacted(fatlib, outside, 90, "libk.so")


def test_files_that_are_not_cuda_libraries_are_named(tmp_path: Path) -> None:
    with pytest.raises(slim.SlimError, match="x.txt: expected a 64-bit little-endian ELF"):
        slim.elf_section(b"hello world, not elf", ".nv_fatbin", "x.txt")
    exe = Path(sys.executable).resolve().read_bytes()  # an ELF file with no CUDA code
    with pytest.raises(slim.SlimError, match="python: no .nv_fatbin section"):
        slim.compact_fatbins(bytearray(exe), 90, "python")
    bad = tmp_path / "not-a-wheel.whl"
    bad.write_text("nope")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ort_slim.py"), str(bad), "--out", str(tmp_path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"ort_slim: {bad}: expected an onnxruntime-gpu wheel (a zip file)"


@needs_nvcc
def test_slim_wheel_round_trip(fatlib: bytes, tmp_path: Path) -> None:
    """A wheel laid out as onnxruntime-gpu's -> parts -> joined, checked and unpacked as scripts/gpu_bench.sh
    does on the device: the files `pip install --target` would have written, the CUDA library compacted."""
    whl = tmp_path / "onnxruntime_gpu-9.9.9-cp312-cp312-linux_x86_64.whl"
    files = {slim.CUDA_LIB: fatlib, "onnxruntime/__init__.py": b"__version__ = '9.9.9'\n",
             "onnxruntime_gpu-9.9.9.dist-info/METADATA": b"Name: onnxruntime-gpu\n", "other/ignored.txt": b"x"}
    with zipfile.ZipFile(whl, "w") as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    out = tmp_path / "parts"
    rec = slim.slim_wheel(whl, 90, out, part=64 * 1024)
    parts = sorted(out.glob("ort-slim.tar.xz.part-*"))
    assert [p.name for p in parts] == rec["parts"] and len(parts) >= 2
    assert all(p.stat().st_size <= 64 * 1024 for p in parts)
    joined = b"".join(p.read_bytes() for p in parts)
    assert hashlib.sha256(joined).hexdigest() == (out / "ort-slim.sha256").read_text().strip()
    assert json.loads((out / "ort-slim.json").read_text())["archive_sha256"] == rec["archive_sha256"]
    with tarfile.open(fileobj=io.BytesIO(joined), mode="r:xz") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert set(got) == set(files) - {"other/ignored.txt"}
    want = bytearray(fatlib)
    slim.compact_fatbins(want, 90, "x")
    assert got[slim.CUDA_LIB] == want
    assert got["onnxruntime/__init__.py"] == files["onnxruntime/__init__.py"]
    assert rec["files"][slim.CUDA_LIB] == hashlib.sha256(want).hexdigest()


def test_gpu_smoke_logic_on_the_cpu_provider() -> None:
    """The device gate's graph, shared-buffer binding and comparisons, on onnxruntime's CPU provider."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--provider", "cpu"],
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("GPU smoke ok: onnxruntime ") and "CPUExecutionProvider" in r.stdout
    assert "then a decode step and a 3-row chunk after it" in r.stdout


def test_gpu_smoke_verdicts() -> None:
    """What the gate calls 'cannot run' (exit 3: go back to the full wheel) and 'differs' (exit 4: measure anyway,
    the full wheel has the same sm_90 kernels): its comparisons fail on wrong results, its run wrapper tells a
    kernel-image failure from any other."""
    import numpy as np

    smoke = _script("gpu_smoke")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 8, 64)).astype(np.float16)
    smoke.compare("same", a, a.copy())
    off = a.copy()
    off[0, 0] += 1.0  # one row moved by 1: ~12 % of the norm
    for bad in (off, np.where(a > 2, np.float16(np.inf), a), a[:, :7]):
        with pytest.raises(smoke.Differs):
            smoke.compare("bad", bad, a)
    kv = np.zeros((1, 2, 32, 16), np.float16)
    kv[0, :, :9] = 1
    smoke.written_rows("kv", kv, 9)
    for upto in (8, 10):  # a row past the written ones, or one missing
        with pytest.raises(smoke.Differs):
            smoke.written_rows("kv", kv, upto)

    def fails(msg: str):
        def run() -> None:
            raise RuntimeError(msg)
        return run

    with pytest.raises(smoke.CannotRun, match="decode step"):
        smoke._run("decode step", fails("CUDA failure 209: no kernel image is available for execution on the device"))
    with pytest.raises(smoke.Differs, match="chunk"):
        smoke._run("chunk", fails("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : seqlens_k"))
    assert smoke._run("ok", lambda: 5) == 5
