"""The thin CLI over build/inspect/verify: exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from cli_main import run_main as _run
from hulurt.manifest import sha256_file


def test_inspect_prints_pieces_and_ranges(bundle_factory, capsys) -> None:
    code, out, _ = _run(capsys, "inspect", str(bundle_factory("qwen2", "fp32")))
    assert code == 0
    for text in ("precision   fp32", "past_key_values.0.key", "seq_len [1, 64, 512]", "image 290", "vision.onnx.data"):
        assert text in out


def test_build_rejects_size_mismatch(ckpt_qwen2: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "build", "--checkpoint", str(ckpt_qwen2), "--size", "tiny-qwen3",
                        "--out", str(tmp_path / "b"))
    assert code == 2 and "config.json: checkpoint does not match --size tiny-qwen3" in err
    assert not (tmp_path / "b").exists()


def test_verify_passes_then_fails_on_wrong_weights(
    bundle_factory, ckpt_qwen2: Path, tmp_path: Path, capsys
) -> None:
    good = bundle_factory("qwen2", "fp32")
    # the manifest records the folder's name only (no local path): verify is told where the checkpoint is
    code, out, _ = _run(capsys, "verify", str(good), "--checkpoint", str(ckpt_qwen2), "--steps", "4")
    assert code == 0 and "PASS" in out

    # a consistent bundle (hashes updated) whose vision weights are wrong: only the parity check can catch it
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    data = bad / "vision.onnx.data"
    arr = np.frombuffer(data.read_bytes(), dtype=np.float32).copy()
    arr[: arr.size // 2] *= 1.01
    data.write_bytes(arr.tobytes())
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["vision.onnx.data"]["sha256"] = sha256_file(data)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = _run(capsys, "verify", str(bad), "--checkpoint", str(ckpt_qwen2), "--steps", "4")
    assert code == 1
    assert "FAIL max abs > 0.0001" in out and "beyond tolerance" in err and "vision/image 4x6/visual_embeds" in err
