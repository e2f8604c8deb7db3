"""`hulurt batch` on a folder of real files (nibabel's MR volume, pydicom's CT series and single DICOM files, a
PNG, one damaged NIfTI): one JSON line per study, the damaged one recorded as an error naming it, the rest
answered exactly as `hulurt.load(bundle).generate` answers, and a second run does no work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from e2e.bundles import bundle

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

import hulurt
from hulurt.batch import discover, main

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
SERIES = PYDICOM_DATA / "dicomdirtests" / "98892001" / "CT5N"
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
PROMPT = "Describe the findings."


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("studies")
    (root / "mr").mkdir()
    shutil.copy(ANATOMICAL, root / "mr" / "anatomical.nii")
    shutil.copytree(SERIES, root / "patient1" / "ct_series")
    (root / "singles").mkdir()
    shutil.copy(PYDICOM_DATA / "CT_small.dcm", root / "singles" / "CT_small.dcm")
    shutil.copy(PYDICOM_DATA / "MR_small.dcm", root / "singles" / "MR_small.dcm")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8)).save(root / "xray.png")
    (root / "damaged.nii.gz").write_bytes(ANATOMICAL.read_bytes()[:500])  # cut short: a damaged upload
    (root / "README.txt").write_text("not a study\n")
    return root


def test_discovery_groups_a_series_folder(studies: Path) -> None:
    found = {s.key: s for s in discover(studies, PROMPT)}
    assert sorted(found) == ["damaged.nii.gz", "mr/anatomical.nii", "patient1/ct_series", "singles/CT_small.dcm",
                             "singles/MR_small.dcm", "xray.png"]
    assert found["patient1/ct_series"].kind == "dicom" and found["patient1/ct_series"].path.is_dir()
    assert found["patient1/ct_series"].series_uid == str(pydicom.dcmread(next(SERIES.iterdir())).SeriesInstanceUID)


def test_batch_records_every_study_and_a_rerun_does_nothing(studies: Path, tmp_path: Path, capsys) -> None:
    tiny = bundle("qwen2")
    out = tmp_path / "results.jsonl"
    args = [str(studies), "--bundle", str(tiny), "--prompt", PROMPT, "--out", str(out), "--max-new-tokens", "6",
            "--threads", "1", "--provider", "cpu", "--skip-hash-check", "--no-progress"]
    assert main(args) == 1  # one study failed
    assert "5 ok, 1 failed, 0 already done" in capsys.readouterr().err
    recs = {r["study"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(recs) == 6 and len(out.read_text().splitlines()) == 6
    bad = recs["damaged.nii.gz"]
    assert bad["status"] == "error" and "damaged.nii.gz" in bad["error"] and "answer" not in bad
    model = hulurt.load(tiny, provider="cpu", threads=1, verify_hashes=False)
    ct = recs["patient1/ct_series"]
    ref = model.generate(PROMPT, volume=studies / "patient1" / "ct_series", max_new_tokens=6)
    assert ct["status"] == "ok" and ct["answer"] == ref.text and ct["new_tokens"] == len(ref.token_ids)
    assert ct["visual_tokens"] == {"before": ref.timings.visual_tokens_before, "after": ref.timings.visual_tokens_after}
    uid = str(pydicom.dcmread(next(SERIES.iterdir())).SeriesInstanceUID)
    assert ct["dicom"]["series_uid"] == uid and ct["dicom"]["sorted_by"] == "ImagePositionPatient"
    assert ct["dicom"]["files"] == 5 and ct["dicom"]["window"] is not None and ct["frames"] == 5
    assert recs["mr/anatomical.nii"]["answer"] == model.generate(PROMPT, volume=studies / "mr" / "anatomical.nii",
                                                                 max_new_tokens=6).text
    assert recs["xray.png"]["answer"] == model.generate(PROMPT, images=[studies / "xray.png"], max_new_tokens=6).text
    single = recs["singles/CT_small.dcm"]
    assert single["status"] == "ok" and single["dicom"]["sorted_by"] == "frame order"
    for r in recs.values():
        if r["status"] == "ok":
            assert r["stop_reason"] in ("stop_id", "max_new_tokens") and r["timings"]["ttft_s"] > 0

    before = out.read_bytes()
    assert main(args) == 0
    assert "all already in" in capsys.readouterr().err  # decided before the bundle is even loaded
    assert out.read_bytes() == before

    # --retry-errors answers the failed one again (still damaged: one more error line, nothing else)
    assert main([*args, "--retry-errors"]) == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[-1])["study"] == "damaged.nii.gz"


def test_csv_of_path_and_prompt(studies: Path, tmp_path: Path, capsys) -> None:
    csv_path = studies / "list.csv"
    csv_path.write_text("path,prompt\nmr/anatomical.nii,Is the brain normal?\nxray.png,\nmissing.nii,Where?\n")
    out = tmp_path / "r.jsonl"
    rc = main([str(csv_path), "--bundle", str(bundle("qwen2")), "--prompt", "Default question?", "--out", str(out),
               "--max-new-tokens", "3", "--threads", "1", "--provider", "cpu", "--skip-hash-check", "--no-progress"])
    assert rc == 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["study"], r["prompt"], r["status"]) for r in recs] == [
        ("mr/anatomical.nii", "Is the brain normal?", "ok"), ("xray.png", "Default question?", "ok"),
        ("missing.nii", "Where?", "error")]
    assert "missing.nii" in recs[2]["error"]
    csv_path.unlink()


def test_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope"), "--bundle", str(tmp_path), "--prompt", "x", "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
