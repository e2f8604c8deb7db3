"""The runtime alone (fresh venv: hulurt + its extras, no torch/transformers/onnx/huluexport) runs the CLI on a
bundle built beforehand by the dev venv (`make test-runtime-only` builds it into artifacts/runtime-only/)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = Path(os.environ.get("HULU_RUNTIME_ONLY_BUNDLE", ROOT / "artifacts" / "runtime-only" / "bundle"))
FORBIDDEN = ("torch", "transformers", "onnx", "onnxscript", "huluexport")

pytestmark = pytest.mark.skipif(
    not (BUNDLE / "manifest.json").is_file(),
    reason=f"no prebuilt bundle at {BUNDLE}: run `make test-runtime-only` (it builds one with the dev venv first)",
)


def run(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "hulurt", str(BUNDLE), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=180, env=env)


def test_this_venv_has_no_exporter_stack() -> None:
    if os.environ.get("HULU_RUNTIME_ONLY_VENV") != "1":
        pytest.skip("not the runtime-only venv (make test-runtime-only sets HULU_RUNTIME_ONLY_VENV=1)")
    import site

    # only what is installed in this venv: the repo root (on sys.path when pytest runs from it) holds the source
    # tree and egg-info of huluexport, which are not an installation
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions(path=site.getsitepackages())}
    assert sorted(names & {"torch", "transformers", "onnx", "onnxscript", "huluexport"}) == []
    assert "huluexport-runtime" in names and "onnxruntime" in names


def test_cli_answers_about_an_image(tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "xray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 80), dtype=np.uint8)).save(img)
    r = run("--prompt", "What is shown?", "--image", img, "--max-new-tokens", "8", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "visual tokens" in r.stderr and "tok/s" in r.stderr


def test_cli_answers_about_a_volume() -> None:
    nib = pytest.importorskip("nibabel")
    nii = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not nii.is_file():
        pytest.skip("this nibabel wheel ships no test data")
    r = run("--prompt", "Describe the scan.", "--volume", nii, "--max-new-tokens", "8", "--skip-hash-check")
    assert r.returncode == 0, r.stderr
    assert "visual tokens" in r.stderr


def test_cli_imports_nothing_forbidden() -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['hulurt', {str(BUNDLE)!r}, '--prompt', 'hi', '--max-new-tokens', '2']\n"
        "try:\n    runpy.run_module('hulurt', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code\n"
        f"print('LOADED', sorted(m for m in {FORBIDDEN!r} if m in sys.modules), 'onnxruntime' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "LOADED [] True" in r.stdout


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    r = run("--prompt", "hi", "--volume", tmp_path / "none.nii.gz")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "none.nii.gz" in r.stderr
