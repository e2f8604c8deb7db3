"""checkpoint.from_checkpoint: both formats, Qwen2/Qwen3 detection, logged defaults; preset arithmetic."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from huluexport.checkpoint import from_checkpoint
from huluexport.checkpoint.fixtures import ORIGINAL_VISION_DIR, build_tokenizer
from huluexport.config import SIZES, to_dims
from huluexport.errors import ConfigError


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "ckpt"))


def _edit_config(d: Path, **changes: object) -> None:
    raw = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "config.json").write_text(json.dumps(raw))


def test_7b_preset_matches_the_index_total_size() -> None:
    # docs/model.md §1.4: metadata.total_size of the 7B index = 16,089,489,888 bytes in bf16
    assert SIZES["7b"].num_parameters() == 8_044_744_944
    assert SIZES["7b"].vision.num_parameters() == 412_147_440


def test_tokenizer_ids_match_the_tiny_preset() -> None:
    tok = build_tokenizer()
    t = SIZES["tiny"].tokens
    assert [tok.token_to_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")] == [
        t.endoftext,
        t.im_start,
        t.im_end,
        t.image,
    ]
    assert tok.get_vocab_size() <= SIZES["tiny"].decoder.vocab
    enc = tok.encode("<|im_start|>user\n<image>\nDescribe the chest CT.<|im_end|>")
    assert (
        enc.ids[0] == t.im_start and t.image in enc.ids and enc.ids[-1] == t.im_end
    )  # no BOS, atomic <image>
    assert tok.decode(enc.ids, skip_special_tokens=True) == "user\n\nDescribe the chest CT."


def test_defaults_are_logged(
    tiny_ckpts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    _edit_config(d, use_token_compression=..., rms_norm_eps=..., rope_theta=...)
    with caplog.at_level(logging.INFO, logger="huluexport.checkpoint"):
        cfg = from_checkpoint(d)
    assert cfg.reduction.enabled  # missing key => True (upstream HF default)
    text = caplog.text
    for key in ("use_token_compression", "rms_norm_eps", "rope_theta", "head_dim"):
        assert f"no {key}" in text, key
    assert cfg.decoder.head_dim == 16 and cfg.decoder.rope_theta == 1e6


def test_transformers5_rope_parameters_are_read(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen3"], tmp_path)
    _edit_config(d, rope_theta=..., rope_parameters={"rope_type": "default", "rope_theta": 123456.0})
    assert from_checkpoint(d).decoder.rope_theta == 123456.0


def test_original_format_without_vision_dir_defaults_heads_16(
    tiny_ckpts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = _copy(tiny_ckpts["original-qwen3"], tmp_path)
    shutil.rmtree(d / ORIGINAL_VISION_DIR)
    with caplog.at_level(logging.INFO, logger="huluexport.checkpoint"):
        v = from_checkpoint(d).vision
    assert (v.hidden, v.intermediate, v.layers, v.patch, v.heads) == (64, 96, 2, 14, 16)
    assert "num_attention_heads" in caplog.text and "using 16" in caplog.text


def test_image_token_must_agree_with_tokenizer(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    _edit_config(d, image_token_index=291)
    with pytest.raises(ConfigError, match="image_token_index=291.*290"):
        from_checkpoint(d)
    _edit_config(d, image_token_index=-1)  # HF class default = unset -> from the tokenizer
    assert from_checkpoint(d).tokens.image == 290


def test_unsupported_projector(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(tiny_ckpts["hf-qwen2"], tmp_path)
    _edit_config(d, mm_projector_type="simp_spatial_conv")
    with pytest.raises(ConfigError,
                       match="config.json: mm_projector_type must be mlpNx_gelu.*found 'simp_spatial_conv'"):
        from_checkpoint(d)


def test_eos_from_generation_config_and_dims(tiny_ckpts: dict[str, Path]) -> None:
    cfg = from_checkpoint(tiny_ckpts["hf-qwen3"])
    assert cfg.tokens.eos == (288, 286)
    dims = to_dims(cfg, "float16")
    assert (dims.hidden, dims.head_dim, dims.vision_head_dim, dims.kv_heads, dims.act_dtype) == (
        48,
        16,
        16,
        2,
        "float16",
    )


def test_cli_init_checkpoint(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from huluexport.cli import cli

    r = CliRunner().invoke(
        cli, ["init-checkpoint", "--out", str(tmp_path / "c"), "--decoder", "qwen3", "--seed", "2"]
    )
    assert r.exit_code == 0, r.output
    assert from_checkpoint(tmp_path / "c").decoder.qk_norm
    r = CliRunner().invoke(
        cli, ["init-checkpoint", "--size", "7b", "--layout", "original", "--out", str(tmp_path / "big")]
    )
    assert r.exit_code != 0 and "--layers" in str(r.exception)  # full depth is streamed only in the hf layout
