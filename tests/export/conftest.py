"""Tiny checkpoints and bundles for the export tier, built once per session (each build traces three graphs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from huluexport.checkpoint.fixtures import write_checkpoint
from huluexport.export.pipeline import BuildOptions, build

_BUNDLES: dict[tuple[str, str], Path] = {}
_GQA_BUNDLES: dict[tuple[str, str, bool], Path] = {}


@pytest.fixture(scope="session")
def ckpt_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2", "tiny", seed=0)


@pytest.fixture(scope="session")
def ckpt_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen3", "tiny", seed=1, decoder="qwen3")


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory, ckpt_qwen2: Path, ckpt_qwen3: Path):
    """bundle(flavor, precision) -> path; built on first use with the 'tiny' target (small TensorRT profiles)."""
    ckpts = {"qwen2": ckpt_qwen2, "qwen3": ckpt_qwen3}

    def get(flavor: str, precision: str) -> Path:
        key = (flavor, precision)
        if key not in _BUNDLES:
            out = tmp_path_factory.mktemp("bundles") / f"{flavor}-{precision}"
            _BUNDLES[key] = build(BuildOptions(out=out, checkpoint=ckpts[flavor], precision=precision, target="tiny"))
        return _BUNDLES[key]

    return get


@pytest.fixture(scope="session")
def gqa_bundle_factory(tmp_path_factory: pytest.TempPathFactory, ckpt_qwen2: Path, ckpt_qwen3: Path):
    """bundle(flavor, precision, both=False) -> path of a bundle with only the gqa-static decoder form
    (decoder_gqa), or with `both` forms (decoder and decoder_gqa)."""
    ckpts = {"qwen2": ckpt_qwen2, "qwen3": ckpt_qwen3}

    def get(flavor: str, precision: str, both: bool = False) -> Path:
        key = (flavor, precision, both)
        if key not in _GQA_BUNDLES:
            out = tmp_path_factory.mktemp("bundles") / f"{flavor}-{precision}-{'both' if both else 'gqa'}"
            forms = ("v1-concat", "gqa-static") if both else ("gqa-static",)
            _GQA_BUNDLES[key] = build(BuildOptions(out=out, checkpoint=ckpts[flavor], precision=precision,
                                                   target="tiny", decoder_forms=forms))
        return _GQA_BUNDLES[key]

    return get
