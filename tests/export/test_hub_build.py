"""`huluexport build --checkpoint ORG/NAME` from a Hugging Face cache (offline, no network), and what every
bundle's manifest records about its checkpoint: repo id and commit, or the folder's name, and the files'
sha256, never a path of the building machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cli_main import run_main as _run
from hubcache import COMMIT, REPO, make_hub_cache
from stderr_lines import error_text

from huluexport.checkpoint.hub import file_hashes


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _assert_no_local_path(bundle: Path, *local: Path) -> None:
    text = (bundle / "manifest.json").read_text()
    absolute = [s for s in _strings(json.loads(text)) if os.path.isabs(s)]
    assert not absolute, absolute
    for p in (*local, Path.home()):
        assert str(p) not in text, p


def test_folder_build_records_the_folder_name_and_hashes(bundle_factory, ckpt_qwen2: Path) -> None:
    bundle = bundle_factory("qwen2", "fp32")
    w = json.loads((bundle / "manifest.json").read_text())["model"]["weights"]
    assert w["kind"] == "checkpoint" and w["source"] == {"folder": "tiny-qwen2"} and "checkpoint" not in w
    assert w["files"] == file_hashes(ckpt_qwen2)
    shards = {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3, 4)}
    assert shards | {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(w["files"])
    _assert_no_local_path(bundle, ckpt_qwen2.parent)


def test_build_from_a_hub_id_in_the_cache_offline(
    ckpt_qwen2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    make_hub_cache(ckpt_qwen2, cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a network call would fail, not hang
    out = tmp_path / "bundle"
    code, stdout, err = _run(
        capsys,
        "build",
        "--checkpoint",
        REPO,
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--target",
        "tiny",
    )
    assert code == 0, err
    w = json.loads((out / "manifest.json").read_text())["model"]["weights"]
    assert w["source"] == {"repo_id": REPO, "revision": COMMIT}
    assert w["files"] == file_hashes(ckpt_qwen2)  # the same bytes, read through the cache's links
    _assert_no_local_path(out, cache, ckpt_qwen2.parent, tmp_path)

    # verify finds the weights again from the record alone: the repo at that commit, in the cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    code, stdout, err = _run(capsys, "verify", str(out), "--steps", "2")
    assert code == 0 and "PASS" in stdout, err

    # the same repo at a revision that is not cached: one line naming the command that downloads it
    code, _, err = _run(
        capsys,
        "build",
        "--checkpoint",
        REPO,
        "--revision",
        "v9",
        "--cache-dir",
        str(cache),
        "--out",
        str(tmp_path / "b2"),
    )
    assert code == 2 and error_text(err).count("\n") == 1, err
    assert f"download it first with: hf download {REPO} --revision v9 --cache-dir {cache}" in err
    assert not (tmp_path / "b2").exists()


def test_verify_of_a_folder_build_asks_for_the_checkpoint(
    bundle_factory, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "verify", str(bundle_factory("qwen2", "fp32")), "--steps", "1")
    assert code == 2 and error_text(err).count("\n") == 1, err
    assert "built from the local folder tiny-qwen2" in err and "pass --checkpoint DIR" in err
