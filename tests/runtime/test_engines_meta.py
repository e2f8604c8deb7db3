"""hulurt.engines without TensorRT or a GPU: profile shapes and selection, engines.json round trip and every
refusal the runtime makes before it would deserialise an engine (version, GPU, bytes, sha256, source graph)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hulurt.backends.base import BackendOptions
from hulurt.contract import Dims, dim_ranges, pieces
from hulurt.engines import meta as em
from hulurt.engines.__main__ import size_bytes
from hulurt.engines.device import parse_sm
from hulurt.engines.profiles import max_shapes, narrow, profile_shapes, select_profile
from hulurt.engines.staging import StagingError, staged_dir
from hulurt.errors import ContractError

DIMS = Dims(hidden=64, vocab=320, layers=2, kv_heads=2, head_dim=16, vision_head_dim=16, act_dtype="float16")
RANGES = dim_ranges(max_context=512, max_frames=16, max_groups=256, opt_context=64, opt_groups=64)


def test_profile_points_are_consistent_feeds() -> None:
    dec = profile_shapes(pieces(DIMS)["decoder"], RANGES)
    assert dec["inputs_embeds"] == ((1, 1, 64), (1, 64, 64), (1, 512, 64))
    assert dec["past_key_values.1.value"][0] == (1, 2, 0, 16)  # the prefill's empty cache is inside the profile
    assert dec["past_key_values.1.value"][2] == (1, 2, 511, 16)  # past_len max = context - 1
    vis = profile_shapes(pieces(DIMS)["vision"], RANGES)
    lo, opt, hi = vis["pixel_patches"]
    assert vis["rope_cos"] == ((lo[1] * lo[2], 16), (opt[1] * opt[2], 16), (hi[1] * hi[2], 16))
    assert max_shapes(vis)["pixel_patches"] == (16, 256, 4, 588)


def test_narrow_caps_but_never_widens() -> None:
    small = narrow(RANGES, max_context=128, max_frames=4, max_groups=1024)
    assert (small["total_len"].max, small["past_len"].max, small["seq_len"].max) == (128, 127, 128)
    assert small["seq_len"].opt == 64 and small["n_frames"].max == 4
    assert small["n_groups"] == RANGES["n_groups"]  # 1024 > 256: the bundle's own limit stays
    assert narrow(RANGES) == RANGES
    with pytest.raises(ContractError, match="max_context must be >= 2"):
        narrow(RANGES, max_context=1)


def test_select_profile_names_the_input_and_dim_out_of_range() -> None:
    dec = profile_shapes(pieces(DIMS)["decoder"], RANGES)
    ok = {"inputs_embeds": (1, 1, 64), "past_key_values.0.key": (1, 2, 300, 16)}
    assert select_profile([dec], ok) == 0
    with pytest.raises(ContractError, match=r"'past_key_values.0.key' dim 2 = 600 is outside .* \[0, 511\]"):
        select_profile([dec], {"past_key_values.0.key": (1, 2, 600, 16)}, where="decoder.plan")
    with pytest.raises(ContractError, match="has rank 2"):
        select_profile([dec], {"inputs_embeds": (1, 64)})
    small = profile_shapes(pieces(DIMS)["decoder"], narrow(RANGES, max_context=64))
    assert select_profile([small, dec], ok) == 1  # the first profile that holds every shape


def _engine_dir(tmp: Path, module: str = "tensorrt_rtx", version: str = "1.7.1.116", portable: bool = True,
                ccs: tuple[str, ...] = ()) -> em.EngineMeta:
    d = tmp / em.dir_name("portable" if portable else "sm87", module, version)
    d.mkdir(parents=True)
    (d / "decoder.plan").write_bytes(b"\x01plan bytes" * 100)
    entry = em.EngineEntry("decoder", "decoder.plan", 1100, em.sha256_file(d / "decoder.plan"), "decoder.onnx",
                           "ab" * 32, "fp16", 1.5, [profile_shapes(pieces(DIMS)["decoder"], RANGES)])
    meta = em.EngineMeta(d, module, version, "portable" if portable else "sm87", ccs, portable,
                         {"strongly_typed": True, "optimization_level": 3}, {"target": "tiny"}, {"decoder": entry})
    em.write(meta)
    return meta


def test_engines_json_round_trip(tmp_path: Path) -> None:
    meta = _engine_dir(tmp_path)
    back = em.read(meta.root)
    assert back == meta and back.engines["decoder"].profiles[0]["inputs_embeds"][2] == (1, 512, 64)
    em.check(back, module="tensorrt_rtx", version="1.7.1.116", device_cc="8.9", onnx_sha256={"decoder": "ab" * 32})
    em.check(back, module="tensorrt_rtx", version="1.7.1.116", device_cc=None)
    assert meta.root.name == "portable-tensorrt_rtx1.7.1.116"


def _one_line(exc: pytest.ExceptionInfo[BaseException], path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_refuses_another_tensorrt_version(tmp_path: Path) -> None:
    meta = _engine_dir(tmp_path)
    with pytest.raises(em.EngineError) as exc:
        em.check(em.read(meta.root), module="tensorrt_rtx", version="1.8.0.1", device_cc=None)
    assert "built with tensorrt_rtx 1.7.1.116, this machine has tensorrt_rtx 1.8.0.1" in _one_line(exc, meta.path)
    with pytest.raises(em.EngineError, match="this machine has tensorrt 10.3.0"):
        em.check(em.read(meta.root), module="tensorrt", version="10.3.0", device_cc=None)


def test_refuses_another_gpu(tmp_path: Path) -> None:
    meta = _engine_dir(tmp_path, module="tensorrt", version="10.3.0", portable=False, ccs=("8.7",))
    em.check(em.read(meta.root), module="tensorrt", version="10.3.0", device_cc="8.7")
    with pytest.raises(em.EngineError) as exc:
        em.check(em.read(meta.root), module="tensorrt", version="10.3.0", device_cc="8.9")
    assert "compute capability 8.7), this GPU is compute capability 8.9" in _one_line(exc, meta.path)
    portable = _engine_dir(tmp_path / "p")
    with pytest.raises(em.EngineError, match=r"portable \(8.0 and later\)"):  # Turing needs its own engines
        em.check(em.read(portable.root), module="tensorrt_rtx", version="1.7.1.116", device_cc="7.5")


def test_refuses_modified_truncated_or_foreign_engines(tmp_path: Path) -> None:
    meta = _engine_dir(tmp_path)
    plan = meta.root / "decoder.plan"
    data = bytearray(plan.read_bytes())
    data[100] ^= 0xFF  # same size, one byte changed
    plan.write_bytes(bytes(data))
    with pytest.raises(em.EngineError) as exc:
        em.check(em.read(meta.root), module="tensorrt_rtx", version="1.7.1.116", device_cc=None)
    assert "does not match engines.json" in _one_line(exc, plan)
    plan.write_bytes(bytes(data[:-1]))
    with pytest.raises(em.EngineError, match="1099 bytes, engines.json says 1100"):
        em.check(em.read(meta.root), module="tensorrt_rtx", version="1.7.1.116", device_cc=None)
    other = _engine_dir(tmp_path / "o")
    with pytest.raises(em.EngineError, match="built from another decoder.onnx"):
        em.check(em.read(other.root), module="tensorrt_rtx", version="1.7.1.116", device_cc=None,
                 onnx_sha256={"decoder": "cd" * 32})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda raw: raw.pop("module"), "field 'module' is missing"),
        (lambda raw: raw.update(format_version=7), "format_version 7"),
        (lambda raw: raw["engines"]["decoder"].update(file="../x.plan"), "must be a plain file name"),
        (lambda raw: raw["engines"]["decoder"].update(bytes="1100"), "field 'bytes' should be int"),
    ],
)
def test_bad_engines_json_is_one_line(tmp_path: Path, edit, message: str) -> None:
    meta = _engine_dir(tmp_path)
    raw = json.loads(meta.path.read_text())
    edit(raw)
    meta.path.write_text(json.dumps(raw))
    with pytest.raises(em.EngineError, match=message) as exc:
        em.read(meta.root)
    _one_line(exc, meta.path)


def test_staged_dir_is_all_or_nothing(tmp_path: Path) -> None:
    final = tmp_path / "engines" / "x"
    with pytest.raises(RuntimeError), staged_dir(final, marker="engines.json") as tmp:
        (tmp / "decoder.plan").write_bytes(b"half")
        raise RuntimeError("build failed")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with staged_dir(final, marker="engines.json") as tmp:
        (tmp / "engines.json").write_text("{}")
    assert (final / "engines.json").is_file()
    with pytest.raises(StagingError, match="already exists; pass --overwrite"):
        with staged_dir(final, marker="engines.json"):
            pass
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "a.txt").write_text("mine")
    with pytest.raises(StagingError, match="this tool wrote"):
        with staged_dir(foreign, overwrite=True, marker="engines.json"):
            pass
    assert (foreign / "a.txt").read_text() == "mine"


def test_option_parsing() -> None:
    assert [parse_sm(s) for s in ("sm89", "8.7", "120", "SM_75")] == ["8.9", "8.7", "12.0", "7.5"]
    with pytest.raises(em.EngineError, match="expected a compute capability"):
        parse_sm("ampere")
    assert size_bytes("2G") == 2 * 2**30 and size_bytes("512M") == 512 * 2**20 and size_bytes("4096") == 4096


def test_ort_tensorrt_ep_gets_manifest_profiles_and_caches(tmp_path: Path) -> None:
    """The TensorRT execution provider's options (onnxruntime CPU here has no TensorRT EP to open them with):
    explicit min/opt/max shapes of every input from the manifest, engine and timing caches in one directory."""
    from e2e.bundles import bundle
    from hulurt.backends.ort import provider_list
    from hulurt.manifest import load_manifest

    b = bundle("qwen2")
    m = load_manifest(b, verify_hashes=False)
    opts = BackendOptions(provider="tensorrt", trt_cache_dir=str(tmp_path / "cache"))
    (name, trt), _cuda, cpu = provider_list("tensorrt", opts, b / "decoder.onnx")
    assert name == "TensorrtExecutionProvider" and cpu == "CPUExecutionProvider"
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "cache")
    assert trt["trt_engine_cache_enable"] and trt["trt_timing_cache_enable"]
    prof = profile_shapes(m.specs()["decoder"], m.dim_ranges)
    mins = dict(item.split(":") for item in trt["trt_profile_min_shapes"].split(","))
    maxs = dict(item.split(":") for item in trt["trt_profile_max_shapes"].split(","))
    assert set(mins) == set(prof) and len(trt["trt_profile_opt_shapes"].split(",")) == len(prof)
    k = "past_key_values.0.key"
    assert mins[k] == "x".join(map(str, prof[k][0])) and maxs[k] == "x".join(map(str, prof[k][2]))
    (_, plain), _, _ = provider_list("tensorrt", BackendOptions(provider="tensorrt"), b / "decoder.onnx")
    assert "trt_engine_cache_enable" not in plain and "trt_profile_min_shapes" in plain
