"""Checkpoint loader: both layouts round-trip strictly, tie rules, prefix normalisation, typed errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from huluexport.checkpoint import LM_HEAD, checkpoint_name, from_checkpoint, normalize_name, plan
from huluexport.checkpoint.fixtures import fixture_config
from huluexport.checkpoint.random_weights import random_state
from huluexport.config import SIZES
from huluexport.errors import CheckpointError
from huluexport.reference.weights import iter_tensors, load_model

SHARD2 = "model-00002-of-00003.safetensors"


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "ckpt"))


def _index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize(
    ("key", "decoder"), [("hf-qwen2", "qwen2"), ("hf-qwen3", "qwen3"), ("original-qwen3", "qwen3")]
)
def test_layouts_round_trip_exactly(tiny_ckpts: dict[str, Path], key: str, decoder: str) -> None:
    d = tiny_ckpts[key]
    cfg = from_checkpoint(d)
    expect_cfg = fixture_config("tiny", decoder)
    assert cfg.decoder == expect_cfg.decoder and cfg.vision == expect_cfg.vision
    assert cfg.tokens == expect_cfg.tokens and cfg.projector == expect_cfg.projector
    model = load_model(d)
    assert model.dtype == torch.bfloat16
    want = random_state(expect_cfg, seed=0, lm_head=not expect_cfg.decoder.tie_embeddings)
    got = model.state_dict()
    assert set(got) == set(random_state(expect_cfg, seed=0))
    for ref, t in want.items():
        assert torch.equal(got[ref], t.to(torch.bfloat16)), ref
    if expect_cfg.decoder.tie_embeddings:
        assert model.decoder.lm_head.weight is model.decoder.embed_tokens.weight


def test_hf_layout_puts_lm_head_in_the_odd_shard(tiny_ckpts: dict[str, Path]) -> None:
    wm = _index(tiny_ckpts["hf-qwen2"])["weight_map"]
    assert wm["lm_head.weight"] == "model-00004-of-00003.safetensors"
    assert {v for k, v in wm.items() if k != "lm_head.weight"} == {
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    }
    assert "lm_head.weight" not in _index(tiny_ckpts["hf-qwen3"])["weight_map"]  # tied, absent


def test_original_layout_detects_qwen3_despite_model_type(tiny_ckpts: dict[str, Path]) -> None:
    d = tiny_ckpts["original-qwen3"]
    raw = json.loads((d / "config.json").read_text())
    assert raw["model_type"] == "hulumed_qwen2" and "vision_encoder_config" not in raw
    cfg = from_checkpoint(d)
    assert cfg.decoder.qk_norm and not cfg.decoder.qkv_bias and cfg.decoder.head_dim == 16


def test_tie_flag_true_with_stored_lm_head_uses_the_stored_tensor(tmp_path: Path) -> None:
    from huluexport.checkpoint.fixtures import write_checkpoint

    d = write_checkpoint(tmp_path / "c", decoder="qwen3", lm_head="stored")
    cfg = from_checkpoint(d)
    assert cfg.decoder.tie_embeddings
    assert not plan(d, cfg).tie_lm_head
    model = load_model(d)
    stored = load_file(str(d / "model-00004-of-00003.safetensors"))["lm_head.weight"]
    assert torch.equal(model.decoder.lm_head.weight, stored)
    assert not torch.equal(model.decoder.lm_head.weight, model.decoder.embed_tokens.weight)


def test_untied_without_lm_head_is_an_error(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    idx = _index(d)
    del idx["weight_map"]["lm_head.weight"]
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="lm_head.weight.*tie_word_embeddings=false") as e:
        plan(d, from_checkpoint(d))
    assert e.value.tensor == "lm_head.weight" and e.value.file.endswith("model.safetensors.index.json")


def test_vllm_style_prefixes_are_normalised(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    src = tiny_ckpts["hf-qwen2"]
    d = tmp_path / "vllm"
    d.mkdir()
    for f in ("config.json", "tokenizer.json", "generation_config.json", "preprocessor_config.json"):
        shutil.copy(src / f, d / f)
    tensors = {}
    for ref, t in iter_tensors(src, from_checkpoint(src)):
        name = checkpoint_name(ref)
        for canon, alias in (
            ("model.vision_encoder.", "vision_encoder."),
            ("model.mm_projector.", "mm_projector."),
            ("model.", "language_model.model."),
            ("lm_head.", "language_model.lm_head."),
        ):
            if name.startswith(canon):
                name = alias + name[len(canon) :]
                break
        tensors[name] = t.contiguous()
    save_file(tensors, str(d / "model.safetensors"))
    a, b = load_model(src), load_model(d)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert normalize_name("model.vision_encoder.vision_encoder.post_layernorm.weight") == (
        "model.vision_encoder.post_layernorm.weight"
    )


def test_iter_tensors_yields_each_parameter_once_and_casts(tiny_ckpts: dict[str, Path]) -> None:
    d = tiny_ckpts["hf-qwen3"]
    cfg = from_checkpoint(d)
    names = []
    for ref, t in iter_tensors(d, cfg, torch.float32):
        assert t.dtype == torch.float32
        names.append(ref)
    assert len(names) == len(set(names))
    assert names[-1] == LM_HEAD  # tied: yielded last, as the embedding tensor


# ---- typed errors: each names the file and the tensor ------------------------------------------------


def test_missing_shard(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    (d / SHARD2).unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert SHARD2 in str(e.value) and e.value.file.endswith(SHARD2)
    assert e.value.tensor and e.value.tensor in str(e.value)


def test_tensor_missing_from_index(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    idx = _index(d)
    del idx["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="missing") as e:
        load_model(d)
    assert (
        e.value.tensor == "model.layers.1.mlp.up_proj.weight"
        and "model.layers.1.mlp.up_proj.weight" in str(e.value)
    )
    assert "model.safetensors.index.json" in str(e.value)


def test_tensor_listed_but_missing_from_shard(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    shard = load_file(str(d / SHARD2))
    victim = sorted(shard)[0]
    del shard[victim]
    save_file(shard, str(d / SHARD2))
    with pytest.raises(CheckpointError, match="missing from the file") as e:
        load_model(d)
    assert e.value.tensor == victim and victim in str(e.value) and SHARD2 in str(e.value)


def test_unexpected_tensor(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    shard = load_file(str(d / SHARD2))
    extra = "model.layers.0.self_attn.rotary_emb.inv_freq"
    shard[extra] = torch.zeros(8)
    save_file(shard, str(d / SHARD2))
    idx = _index(d)
    idx["weight_map"][extra] = SHARD2
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="unexpected tensor") as e:
        load_model(d)
    assert e.value.tensor == extra and extra in str(e.value) and SHARD2 in str(e.value)


def test_wrong_shape(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    wm = _index(d)["weight_map"]
    victim = "model.layers.0.self_attn.k_proj.weight"
    shard_name = wm[victim]
    shard = load_file(str(d / shard_name))
    shard[victim] = torch.zeros(48, 64, dtype=torch.bfloat16)  # should be [kv_heads * d, H] = [32, 64]
    save_file(shard, str(d / shard_name))
    with pytest.raises(CheckpointError, match=r"shape \[48, 64\].*\[32, 64\]") as e:
        load_model(d)
    assert e.value.tensor == victim and victim in str(e.value) and shard_name in str(e.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", None])
def test_unreadable_config_json(tiny_ckpts: dict[str, Path], tmp_path: Path, content: str | None) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    if content is None:
        (d / "config.json").unlink()
    else:
        (d / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match="config.json") as e:
        load_model(d)
    assert e.value.file.endswith("config.json")


def test_error_message_is_one_line(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    """The CLI shows str(error) as its one line: it must name file and tensor without newlines."""
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    (d / SHARD2).unlink()
    with pytest.raises(CheckpointError) as e:
        plan(d, SIZES["tiny"])
    assert "\n" not in str(e.value)


def test_sharded_bin_with_index(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    """Original layout split over pytorch_model-0000k-of-00002.bin with pytorch_model.bin.index.json."""
    d = _copy(tiny_ckpts["original-qwen3"], tmp_path)
    sd = torch.load(str(d / "pytorch_model.bin"), weights_only=True)
    (d / "pytorch_model.bin").unlink()
    names = sorted(sd)
    wm = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        fname = f"pytorch_model-0000{k + 1}-of-00002.bin"
        torch.save({n: sd[n] for n in part}, str(d / fname))
        wm.update(dict.fromkeys(part, fname))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    a, b = load_model(tiny_ckpts["original-qwen3"]), load_model(d)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(k.startswith("model.vision_encoder.vision_encoder.") for k in wm)  # the nested original prefix
