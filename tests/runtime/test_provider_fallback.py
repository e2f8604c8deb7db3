"""onnxruntime-gpu installed where its CUDA provider cannot load (no driver, no CUDA 13 libraries): onnxruntime
itself falls back to the CPU quietly. hulurt must not run a CPU session under a GPU name: `--provider cuda`
fails with the reason, `auto` runs on the CPU and says so (hulurt/backends/ort.py).

Runs only with onnxruntime-gpu on a machine where its CUDA provider does not load, e.g. this CPU machine with
`pip install --target DIR onnxruntime-gpu` first on PYTHONPATH; skipped (and NOT run) everywhere else.
"""

from __future__ import annotations

import logging

import hulurt
import pytest
from e2e.bundles import bundle
from hulurt.backends.base import BackendError

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def gqa_bundle():
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider (CPU build): fallback check NOT run")
    path = bundle("qwen2", gqa=True)
    probe = ort.InferenceSession(str(path / "embed.onnx"), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if probe.get_providers()[0] == "CUDAExecutionProvider":
        pytest.skip("the CUDA provider loads on this machine: the fallback check NOT run (tests/gpu covers it)")
    return path


def test_explicit_cuda_fails_with_the_reason(gqa_bundle) -> None:
    with pytest.raises(BackendError, match=r"lists CUDAExecutionProvider but the session runs on "
                                           r"\['CPUExecutionProvider'\].*pass --provider cpu"):
        hulurt.load(gqa_bundle, provider="cuda", verify_hashes=False).generate("hi", max_new_tokens=2, stop_ids=())


def test_auto_runs_on_the_cpu_and_says_so(gqa_bundle, caplog: pytest.LogCaptureFixture) -> None:
    cpu = hulurt.load(gqa_bundle, provider="cpu", threads=1, verify_hashes=False)
    with caplog.at_level(logging.WARNING, logger="hulurt.backends.ort"):
        auto = hulurt.load(gqa_bundle, provider="auto", threads=1, verify_hashes=False)
        got = auto.generate("Describe the heart.", max_new_tokens=8, stop_ids=())
    assert auto.provider == "cpu" and not auto.uses_cuda_graph
    assert any("did not load" in r.getMessage() and r.getMessage().endswith("running on cpu")
               for r in caplog.records)
    assert got.token_ids == cpu.generate("Describe the heart.", max_new_tokens=8, stop_ids=()).token_ids
