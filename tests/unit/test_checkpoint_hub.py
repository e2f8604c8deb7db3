"""`--checkpoint org/name`: resolved through a Hugging Face cache laid out as huggingface_hub lays it out
(models--org--name/{blobs,refs,snapshots}), never over the network here; one line when it cannot be found."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hubcache import COMMIT, REPO, make_hub_cache

from huluexport.checkpoint import from_checkpoint
from huluexport.checkpoint.hub import file_hashes, locate, locate_recorded
from huluexport.errors import CheckpointError, ConfigError


@pytest.fixture
def cache(tiny_ckpts: dict[str, Path], tmp_path: Path) -> Path:
    make_hub_cache(tiny_ckpts["hf-qwen2"], tmp_path / "hub")
    return tmp_path / "hub"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the Hub fails at once (nothing listens on port 9)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_repo_id_resolves_from_the_cache_offline(cache: Path, tiny_ckpts: dict[str, Path]) -> None:
    loc = locate(REPO, cache_dir=cache)
    assert loc.path == cache / "models--ZJU-AI4H--Hulu-Med-Tiny" / "snapshots" / COMMIT
    assert loc.source == {"repo_id": REPO, "revision": COMMIT}
    # the snapshot's files link into ../../blobs: inside the repository's cache folder, so they are read
    cfg = from_checkpoint(loc.path)
    assert cfg.decoder == from_checkpoint(tiny_ckpts["hf-qwen2"]).decoder
    assert file_hashes(loc.path) == file_hashes(tiny_ckpts["hf-qwen2"])


def test_revision_by_commit_and_the_recorded_source_finds_it_again(cache: Path) -> None:
    loc = locate(REPO, revision=COMMIT, cache_dir=cache)
    assert loc.source == {"repo_id": REPO, "revision": COMMIT}
    again = locate_recorded({"kind": "checkpoint", "source": loc.source}, Path("bundle"), cache_dir=cache)
    assert again.path == loc.path


def test_missing_revision_offline_says_what_to_run(cache: Path) -> None:
    with pytest.raises(ConfigError) as e:
        locate(REPO, revision="v2", cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"--checkpoint {REPO}: revision v2 is not in the Hugging Face cache")
    assert msg.endswith(f"download it first with: hf download {REPO} --revision v2 --cache-dir {cache}")


def test_not_a_folder_nor_a_repo_id(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "missing"), "no-slash", "a/b/c", "../x"):
        with pytest.raises(ConfigError, match="no such folder, and not a Hub repo id"):
            locate(spec)


def test_a_link_out_of_the_repository_cache_is_still_refused(cache: Path, tmp_path: Path) -> None:
    snap = cache / "models--ZJU-AI4H--Hulu-Med-Tiny" / "snapshots" / COMMIT
    outside = tmp_path / "evil.safetensors"
    shutil.copyfile(snap / "model-00002-of-00003.safetensors", outside)
    (snap / "model-00002-of-00003.safetensors").unlink()
    os.symlink(outside, snap / "model-00002-of-00003.safetensors")
    with pytest.raises(
        CheckpointError, match="outside the checkpoint directory .*models--ZJU-AI4H--Hulu-Med-Tiny"
    ):
        from_checkpoint(locate(REPO, cache_dir=cache).path)


def test_folder_record_cannot_be_located_without_checkpoint() -> None:
    with pytest.raises(ConfigError, match="built from the local folder tiny-qwen2.*pass --checkpoint DIR"):
        locate_recorded({"kind": "checkpoint", "source": {"folder": "tiny-qwen2"}}, Path("b"))


def test_no_network_and_no_cache_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode, but the Hub endpoint refuses connections: one line with the download command."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_ETAG_TIMEOUT": "2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    script = (
        "import sys\n"
        "from huluexport.checkpoint.hub import locate\n"
        "from huluexport.errors import HuluError\n"
        "try:\n"
        "    locate(sys.argv[1], cache_dir=sys.argv[2])\n"
        "except HuluError as exc:\n"
        "    print(exc)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, REPO, str(tmp_path / "empty")],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert "\n" not in line and line.startswith(f"--checkpoint {REPO}: not in the Hugging Face cache"), line
    assert line.endswith(f"with: hf download {REPO} --cache-dir {tmp_path / 'empty'}"), line
