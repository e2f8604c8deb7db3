"""Compile check of kernels/ (where nvcc exists; CI has nvcc 13 and no GPU) and the ctypes binding's CPU-side paths:
the library loads, its ABI matches, bad arrays are rejected before any launch, and a launch without a GPU fails
with a typed error instead of crashing.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hulurt import cuda_reduce
from hulurt.errors import ContractError

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA compile check NOT run")


def _make(*args: str, build: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", "python3")}
    return subprocess.run(
        ["make", "-C", str(KERNELS), f"BUILD={build}", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """libhulu_token_reduce.so (sm_90 only, to stay quick) + the compute_80 PTX + the workbench, in a temp dir."""
    build = tmp_path_factory.mktemp("kernels_build")
    res = _make("all", "dev", "ARCHS=90", build=build)
    assert res.returncode == 0, f"make -C kernels failed:\n{res.stdout}\n{res.stderr}"
    return build, res.stdout


@needs_nvcc
def test_make_reports_and_builds(built: tuple[Path, str]) -> None:
    build, log = built
    assert "✓ nvcc found" in log
    assert "✓ building for sm_90" in log
    if not os.environ.get("TRT_ROOT"):
        assert "✗ TensorRT headers not found" in log and "skipping plugin build" in log
        assert not (build / "libhulu_plugins.so").exists()
    lib = build / "libhulu_token_reduce.so"
    ptx = build / "token_reduce.compute_80.ptx"
    assert lib.stat().st_size > 0 and (build / "dev").exists()
    text = ptx.read_text()
    assert ".target sm_80" in text and "mask_stream_kernel" in text and "mask_pair_kernel" in text
    cuobjdump = shutil.which("cuobjdump") or str(Path(NVCC).resolve().parent / "cuobjdump")
    if os.path.exists(cuobjdump):
        elf = subprocess.run(
            [cuobjdump, "--list-elf", "--list-ptx", str(lib)], capture_output=True, text=True, check=False
        )
        assert elf.returncode == 0, elf.stderr
        assert "sm_90" in elf.stdout and ".ptx" in elf.stdout  # SASS and PTX embedded


@needs_nvcc
def test_default_arch_list_covers_orin_hopper_and_newer(tmp_path: Path) -> None:
    """Dry run of the full build: SASS + PTX for sm_80, sm_87 (Orin), sm_90 and the newer arches nvcc supports."""
    res = _make("-n", "lib", build=tmp_path)
    assert res.returncode == 0, res.stderr
    supported = subprocess.run(
        [NVCC, "--list-gpu-code"], capture_output=True, text=True, check=False
    ).stdout.split()
    for arch in ("80", "87", "90", "100", "110", "120"):
        if f"sm_{arch}" in supported:
            assert f"arch=compute_{arch},code=[sm_{arch},compute_{arch}]" in res.stdout


def test_make_without_nvcc_skips_and_succeeds(tmp_path: Path) -> None:
    res = _make("NVCC=", build=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "✗ nvcc not found" in res.stdout
    assert not any(tmp_path.iterdir())


def test_plugin_strings_come_from_the_contract(tmp_path: Path) -> None:
    res = _make("-p", "report", build=tmp_path)
    cdefs = subprocess.run(
        ["python3", "-m", "hulurt.contract", "--cdefs", "token_reduce"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "runtime")},
    ).stdout.strip()
    assert (
        cdefs
        == '-DHULU_PLUGIN_NAME=\\"TokenReduce\\" -DHULU_PLUGIN_VERSION=\\"1\\" -DHULU_PLUGIN_NAMESPACE=\\"hulu\\"'
    )
    assert (
        "hulurt.contract --cdefs token_reduce" in res.stdout
    )  # the plugin rule's variable, not typed strings
    src = (KERNELS / "token_reduce" / "token_reduce_plugin.cpp").read_text()
    assert "HULU_PLUGIN_NAME" in src and '"TokenReduce"' not in src


class _Arr:
    """A device array as any framework publishes it: only the __cuda_array_interface__ dict (never dereferenced)."""

    def __init__(self, shape, typestr, ptr=0x7F0000000000, strides=None, readonly=False):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, readonly),
            "strides": strides,
            "version": 3,
        }


@needs_nvcc
def test_binding_loads_and_checks_abi(built: tuple[Path, str]) -> None:
    lib = cuda_reduce.load_library(built[0] / "libhulu_token_reduce.so")
    assert lib.hulu_tr_abi_version() == cuda_reduce.ABI_VERSION
    assert b"argument" in lib.hulu_tr_error_string(1001)


def test_binding_missing_library_names_path_and_env(tmp_path: Path) -> None:
    with pytest.raises(cuda_reduce.KernelError, match=r"nope\.so.*make -C kernels.*HULU_KERNELS_LIB"):
        cuda_reduce.load_library(tmp_path / "nope.so")


@needs_nvcc
@pytest.mark.parametrize(
    "pixels, keep, match",
    [
        (_Arr((3, 4, 4, 588), "<f2"), _Arr((3, 4), "|u1"), r"pixel_patches: element type '<f2'"),
        (_Arr((3, 4, 4, 500), "<f4"), _Arr((3, 4), "|u1"), r"last dim 500.*588"),
        (_Arr((3, 4, 588), "<f4"), _Arr((3, 5), "|u1"), r"keep_mask: shape \(3, 5\); expected \(3, 4\)"),
        (_Arr((3, 4, 588), "<f4", strides=(4, 3 * 4, 3 * 4 * 4)), _Arr((3, 4), "|u1"), "C-contiguous"),
        (_Arr((3, 4, 588), "<f4"), _Arr((3, 4), "|u1", readonly=True), "read-only"),
        (_Arr((3, 4, 588), "<f4"), _Arr((3, 4), "<i4"), r"keep_mask: element type '<i4'"),
        (object(), _Arr((3, 4), "|u1"), "__cuda_array_interface__"),
    ],
)
def test_binding_rejects_bad_arrays_before_launch(built, pixels, keep, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        cuda_reduce.keep_mask(pixels, keep, library=built[0] / "libhulu_token_reduce.so")


@needs_nvcc
def test_binding_rejects_bad_options(built) -> None:
    lib = built[0] / "libhulu_token_reduce.so"
    px, keep = _Arr((3, 4, 588), "<f4"), _Arr((3, 4), "|u1")
    with pytest.raises(ContractError, match="mode 'fp16'"):
        cuda_reduce.keep_mask(px, keep, mode="fp16", library=lib)
    with pytest.raises(ContractError, match="algo 'fast'"):
        cuda_reduce.keep_mask(px, keep, algo="fast", library=lib)
    with pytest.raises(ContractError, match="min_tokens -1"):
        cuda_reduce.keep_mask(px, keep, min_tokens=-1, library=lib)
    with pytest.raises(ContractError, match=r"out: shape \(5, 7\); expected \[capacity, 8\]"):
        cuda_reduce.gather_rows(
            _Arr((9, 8), "<f2"), _Arr((9,), "<i8"), _Arr((1,), "<i8"), _Arr((5, 7), "<f2"), library=lib
        )


def _has_cuda_device() -> bool:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    n = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(n)) == 0 and n.value > 0


@needs_nvcc
def test_launch_without_a_gpu_is_a_typed_error(built) -> None:
    if _has_cuda_device():
        pytest.skip("a CUDA device is present: the no-GPU error path cannot be exercised here")
    with pytest.raises(cuda_reduce.KernelError, match=r"hulu_tr_keep_mask failed with code \d+: "):
        cuda_reduce.keep_mask(
            _Arr((3, 4, 588), "<f4"), _Arr((3, 4), "|u1"), library=built[0] / "libhulu_token_reduce.so"
        )


@needs_nvcc
def test_plugin_is_built_where_tensorrt_headers_are_found(tmp_path: Path) -> None:
    """No TensorRT headers exist on this machine: the plugin compile itself has NOT run here. What runs is the
    header search: TENSORRT_INCLUDE_DIR found (a directory laid out like JetPack's) -> the plugin rule compiles
    the IPluginV3 glue against it and links libnvinfer from the matching lib directory (dry run)."""
    inc = tmp_path / "usr" / "include" / "aarch64-linux-gnu"
    inc.mkdir(parents=True)
    (inc / "NvInferRuntime.h").write_text("/* stands in for TensorRT's header: the dry run reads no header */\n")
    res = _make("report", f"TENSORRT_INCLUDE_DIR={inc}", build=tmp_path / "b")
    assert res.returncode == 0, res.stderr
    assert f"✓ TensorRT headers found: {inc}/NvInferRuntime.h" in res.stdout
    dry = _make("-n", "plugin", "ARCHS=90", f"TENSORRT_INCLUDE_DIR={inc}", build=tmp_path / "b")
    assert dry.returncode == 0, dry.stderr
    assert "token_reduce_plugin.cpp" in dry.stdout and f"-I{inc}" in dry.stdout
    assert f"-L{tmp_path}/usr/lib/aarch64-linux-gnu -lnvinfer" in dry.stdout


def test_make_says_it_skips_the_plugin_without_headers(tmp_path: Path) -> None:
    defaults = ("/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/local/tensorrt/include")
    if os.environ.get("TRT_ROOT") or any(Path(d, "NvInferRuntime.h").exists() for d in defaults):
        pytest.skip("TensorRT headers are installed here: the skip message is not what runs")
    res = _make("report", f"TENSORRT_INCLUDE_DIR={tmp_path / 'none'}", build=tmp_path / "b")
    assert res.returncode == 0
    line = next(x for x in res.stdout.splitlines() if "TensorRT headers" in x)
    assert line.startswith("✗ TensorRT headers not found") and "skipping plugin build" in line
    assert "set TENSORRT_INCLUDE_DIR" in line
