"""Engines of the tiny fp16 bundles built and serialised by tensorrt-rtx on the CPU (python -m hulurt.engines),
their engines.json checked against the files and the manifest, and the refusals the runtime makes before it
would deserialise anything: a modified engine, an engines.json of another TensorRT version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hulurt.backends import open_session
from hulurt.backends.base import BackendError, BackendOptions
from hulurt.engines import meta as em
from hulurt.engines.__main__ import main as engines_main
from hulurt.engines.profiles import narrow, profile_shapes
from hulurt.manifest import load_manifest

pytestmark = pytest.mark.trt
trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: TensorRT engines NOT built")
PIECES = ("vision", "embed", "decoder")


@pytest.fixture(scope="module")
def engines(bundle_factory, tmp_path_factory) -> dict[str, Path]:
    """flavour -> a private copy of its fp16 bundle with engines built into BUNDLE/engines/ (built once)."""
    out = {}
    for flavor in ("qwen2", "qwen3"):
        bundle = shutil.copytree(bundle_factory(flavor, "fp16"), tmp_path_factory.mktemp("eng") / flavor)
        assert engines_main([str(bundle)]) == 0
        out[flavor] = bundle
    return out


def _dir(bundle: Path) -> Path:
    return bundle / "engines" / em.dir_name("portable", "tensorrt_rtx", trt.__version__)


@pytest.mark.parametrize("flavor", ["qwen2", "qwen3"])
def test_engines_built_and_described(engines, flavor: str, capsys) -> None:
    bundle = engines[flavor]
    m = load_manifest(bundle, verify_hashes=False)
    meta = em.read(_dir(bundle))
    assert (meta.module, meta.version, meta.portable) == ("tensorrt_rtx", trt.__version__, True)
    assert meta.builder["strongly_typed"] and meta.builder["optimization_level"] == 3
    assert tuple(meta.engines) == PIECES
    for piece, e in meta.engines.items():
        f = meta.root / e.file
        assert f.stat().st_size == e.bytes > 0 and em.sha256_file(f) == e.sha256
        assert e.onnx_sha256 == m.files[m.pieces[piece].file].sha256 and e.precision == "fp16"
        assert e.profiles == [profile_shapes(m.specs()[piece], m.dim_ranges)]
    em.check(meta, module=trt.__name__, version=trt.__version__, device_cc=None,
             onnx_sha256={p: m.files[m.pieces[p].file].sha256 for p in PIECES})
    capsys.readouterr()
    assert engines_main([str(bundle), "--check", str(meta.root)]) == 0
    assert "ok (tensorrt_rtx" in capsys.readouterr().out


def _refused(capsys, bundle: Path, d: Path, name: str) -> str:
    capsys.readouterr()
    assert engines_main([str(bundle), "--check", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and str(d / name) in err
    return err


def test_tampered_engine_refused_naming_the_file(engines, tmp_path: Path, capsys) -> None:
    bundle = engines["qwen2"]
    d = shutil.copytree(_dir(bundle), tmp_path / "tampered")
    plan = d / "decoder.plan"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0x5A
    plan.write_bytes(bytes(data))
    assert "does not match engines.json" in _refused(capsys, bundle, d, "decoder.plan")
    with pytest.raises(em.EngineError, match="decoder.plan: sha256"):  # the native backend refuses it too
        open_session(bundle / "decoder.onnx", BackendOptions(provider="trt-native", engines_dir=str(d)))


def test_other_tensorrt_version_refused_naming_the_file(engines, tmp_path: Path, capsys) -> None:
    bundle = engines["qwen3"]
    d = shutil.copytree(_dir(bundle), tmp_path / "other")
    raw = json.loads((d / em.META).read_text())
    raw["version"] = "1.0.0.21"
    (d / em.META).write_text(json.dumps(raw))
    err = _refused(capsys, bundle, d, em.META)
    assert f"built with tensorrt_rtx 1.0.0.21, this machine has tensorrt_rtx {trt.__version__}" in err
    with pytest.raises(em.EngineError, match="1.0.0.21"):
        open_session(bundle / "embed.onnx", BackendOptions(provider="trt-native", engines_dir=str(d)))


def test_engines_leave_the_gqa_form_to_onnxruntime(gqa_bundle_factory, tmp_path: Path, capsys) -> None:
    """A bundle with both decoder forms gets engines of the pieces TensorRT runs (v1 decoder); before, the builder
    took every piece and stopped at decoder_gqa's GroupQueryAttention. A bundle with only the gqa-static form is
    refused in one line that says how to rebuild it, and nothing is written."""
    both = shutil.copytree(gqa_bundle_factory("qwen2", "fp16", both=True), tmp_path / "both")
    assert engines_main([str(both)]) == 0
    assert tuple(em.read(_dir(both)).engines) == PIECES
    only = shutil.copytree(gqa_bundle_factory("qwen2", "fp16"), tmp_path / "gqa")
    capsys.readouterr()
    assert engines_main([str(only)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and str(only / "manifest.json") in err
    assert "no 'decoder' piece" in err and "--decoder-form v1-concat" in err
    assert not (only / "engines").exists()


def test_native_backend_finds_checked_engines_then_needs_a_gpu(engines) -> None:
    """No GPU here: the backend gets past engine discovery and every check, and stops at device memory."""
    try:
        import cuda  # noqa: F401
        pytest.skip("cuda-python is installed: the CPU-only refusal is not what runs here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="needs cuda-python for device memory"):
        open_session(engines["qwen2"] / "decoder.onnx", BackendOptions(provider="trt-native"))


def test_narrowed_target_and_trtexec_lines(bundle_factory, tmp_path: Path, capsys) -> None:
    bundle = bundle_factory("qwen2", "fp16")
    assert engines_main([str(bundle), "--print-trtexec", "--label", "orin-nano", "--max-context", "128",
                         "--workspace", "1G", "--out", str(tmp_path / "e")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("trtexec --onnx=") for line in lines)
    dec = lines[2]
    m = load_manifest(bundle, verify_hashes=False)
    prof = profile_shapes(m.specs()["decoder"], narrow(m.dim_ranges, max_context=128))
    assert "--stronglyTyped" in dec and "--memPoolSize=workspace:1024M" in dec
    assert f"past_key_values.0.key:{'x'.join(map(str, prof['past_key_values.0.key'][2]))}" in dec
    assert "past_key_values.0.key:1x2x127x16" in dec  # context 128 -> past_len max 127
    assert not (tmp_path / "e").exists()  # printing builds nothing
