"""Hostile checkpoints (issue 14, items 3 and 8): every path stays inside the checkpoint, every config.json
value is checked, each refusal is one line naming the file and the entry or key, and comes before torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stderr_lines import error_text

from huluexport.checkpoint import from_checkpoint, plan, side_file
from huluexport.errors import CheckpointError, ConfigError

SHARD2 = "model-00002-of-00003.safetensors"
INDEX = "model.safetensors.index.json"


@pytest.fixture
def ckpt(tiny_ckpts: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the tiny Qwen2 checkpoint inside tmp_path/job (tmp_path itself is 'outside')."""
    return Path(shutil.copytree(tiny_ckpts["hf-qwen2"], tmp_path / "job" / "ckpt"))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


def _redirect(d: Path, to: str, tensor: str = "lm_head.weight") -> None:
    index = json.loads((d / INDEX).read_text())
    index["weight_map"][tensor] = to
    (d / INDEX).write_text(json.dumps(index))


# ---- item 3: paths that lead out of the checkpoint ------------------------------------------------------


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_index_entry_outside_the_checkpoint_is_refused(ckpt: Path, tmp_path: Path, form: str) -> None:
    outside = tmp_path / "outside.safetensors"  # a valid shard holding the tensor: only the path is wrong
    shutil.copy(ckpt / "model-00004-of-00003.safetensors", outside)
    _redirect(ckpt, "../../outside.safetensors" if form == "relative" else str(outside))
    with pytest.raises(CheckpointError) as e:
        from_checkpoint(ckpt)
    msg = _one_line(e.value)
    assert msg.startswith(f"{ckpt.resolve() / INDEX}: entry 'lm_head.weight' -> ")
    assert "outside the checkpoint directory" in msg
    assert e.value.tensor == "lm_head.weight"


def test_symlinked_shard_pointing_outside_is_refused(ckpt: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(ckpt / SHARD2, outside)
    os.symlink(outside, ckpt / SHARD2)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory") as e:
        from_checkpoint(ckpt)
    msg = _one_line(e.value)
    assert f"{INDEX}: entry " in msg and SHARD2 in msg


def test_symlink_inside_the_checkpoint_is_followed(ckpt: Path) -> None:
    """Hub caches link snapshots to blobs inside the same tree: a link that stays inside is fine."""
    (ckpt / "blobs").mkdir()
    shutil.move(ckpt / SHARD2, ckpt / "blobs" / "abc")
    os.symlink(Path("blobs") / "abc", ckpt / SHARD2)
    cfg = from_checkpoint(ckpt)
    assert plan(ckpt, cfg).entries


@pytest.mark.parametrize(
    "name", ["tokenizer.json", "generation_config.json", "preprocessor_config.json", INDEX]
)
def test_symlinked_side_files_pointing_outside_are_refused(ckpt: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside-{name}"
    shutil.move(ckpt / name, outside)
    os.symlink(outside, ckpt / name)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory") as e:
        from_checkpoint(ckpt)
    assert name in _one_line(e.value)


def test_original_layout_vision_dir_outside_is_not_followed(
    tiny_ckpts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = Path(shutil.copytree(tiny_ckpts["original-qwen3"], tmp_path / "job" / "orig"))
    outside = tmp_path / "siglip"
    shutil.move(d / "siglip-navit", outside)
    vc = json.loads((outside / "config.json").read_text())
    vc["num_attention_heads"] = 8  # would be read if the absolute path were followed
    (outside / "config.json").write_text(json.dumps(vc))
    raw = json.loads((d / "config.json").read_text())
    raw["vision_encoder"] = str(outside)
    (d / "config.json").write_text(json.dumps(raw))
    with caplog.at_level("INFO", logger="huluexport.checkpoint"):
        cfg = from_checkpoint(d)
    assert cfg.vision.heads == 4 + 12  # the released default (16), not the outside file's 8
    assert "outside the checkpoint; not followed" in caplog.text


def test_side_file_helper(ckpt: Path, tmp_path: Path) -> None:
    assert side_file(ckpt.resolve(), "no-such-file.json") is None
    assert side_file(ckpt.resolve(), "config.json") == ckpt.resolve() / "config.json"
    os.symlink("config.json", ckpt / "linked.json")  # a link that stays inside: named as listed
    assert side_file(ckpt.resolve(), "linked.json") == ckpt.resolve() / "linked.json"
    (tmp_path / "outside.json").write_text("{}")
    os.symlink(tmp_path, ckpt / "up")
    with pytest.raises(CheckpointError):
        side_file(ckpt.resolve(), "up/outside.json")


# ---- item 8: config.json values -----------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000

# (edit, the key the message must name); edits are applied to the tiny Qwen2 config.json
HOSTILE: list[tuple[dict[str, object] | str, str]] = [
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"num_attention_heads": -4}, "num_attention_heads"),
    ({"num_attention_heads": "4"}, "num_attention_heads"),
    ({"num_attention_heads": 4.5}, "num_attention_heads"),
    ({"hidden_size": -64}, "hidden_size"),
    ({"intermediate_size": "big"}, "intermediate_size"),
    ({"num_hidden_layers": True}, "num_hidden_layers"),
    ({"num_hidden_layers": 10**7}, "num_hidden_layers"),
    ({"vocab_size": None, "num_key_value_heads": 3}, "num_key_value_heads"),
    ({"max_position_embeddings": 10**12}, "max_position_embeddings"),
    ({"mm_projector_type": "mlp99999999x_gelu"}, "mm_projector_type"),
    ({"mm_projector_type": "mlp0x_gelu"}, "mm_projector_type"),
    ({"vision_encoder_config": {"num_attention_heads": 5}}, "vision_encoder_config.num_attention_heads"),
    ({"vision_encoder_config": {"num_attention_heads": 0}}, "vision_encoder_config.num_attention_heads"),
    ({"vision_encoder_config": {"hidden_size": "64"}}, "vision_encoder_config.hidden_size"),
    ({"vision_encoder_config": "siglip"}, "vision_encoder_config"),
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ({"image_token_index": 1.5}, "image_token_index"),
    ({"eos_token_id": ["<|im_end|>"]}, "eos_token_id"),
    ('{"rope_theta": NaN, "num_attention_heads": 4}', "rope_theta"),
    ('{"num_attention_heads": ' + "9" * 5000 + "}", "not readable JSON"),
    ('{"a": ' + DEEP + "}", "nested too deeply"),
    ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nests deeper than 32 levels"),
    ("[1, 2]", "must be a JSON object"),
]


def _write_hostile(d: Path, edit: dict[str, object] | str) -> None:
    if isinstance(edit, str):
        (d / "config.json").write_text(edit)
        return
    raw = json.loads((d / "config.json").read_text())
    for k, v in edit.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        elif v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(("edit", "key"), HOSTILE, ids=[k for _, k in HOSTILE])
def test_hostile_config_json_is_one_line_naming_file_and_key(
    ckpt: Path, edit: dict[str, object] | str, key: str
) -> None:
    _write_hostile(ckpt, edit)
    with pytest.raises((ConfigError, CheckpointError)) as e:
        from_checkpoint(ckpt)
    msg = _one_line(e.value)
    assert msg.startswith(f"{ckpt.resolve() / 'config.json'}: "), msg
    assert key in msg, msg
    assert len(msg) < 400, msg


def test_refusals_need_no_torch(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    """The whole path from config.json to the refusal runs with torch made unimportable, so no torch work
    (no module built from the bad numbers, no tensor read) can happen before it."""
    dirs = []
    for i, (edit, key) in enumerate(HOSTILE):
        d = Path(shutil.copytree(tiny_ckpts["hf-qwen2"], tmp_path / f"c{i}"))
        _write_hostile(d, edit)
        dirs.append((str(d), key))
    script = (
        "import json, sys\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from huluexport.checkpoint import from_checkpoint\n"
        "from huluexport.errors import HuluError\n"
        "out = []\n"
        "for d, key in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        from_checkpoint(d)\n"
        "        out.append('accepted')\n"
        "    except HuluError as exc:\n"
        "        out.append(str(exc))\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(dirs)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    for (_, key), answer in zip(dirs, answers):
        assert "config.json: " in answer and key in answer, (key, answer)


# ---- the CLI: exit 2, one line on stderr, nothing written ---------------------------------------------


def _build(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from huluexport.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["build", *args])
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        ({"mm_projector_type": "mlp99999999x_gelu"}, "config.json: mm_projector_type must be mlpNx_gelu"),
        ({"vision_encoder_config": {"num_attention_heads": 5}}, "config.json: vision_encoder_config.num_att"),
        ("index", f"{INDEX}: entry 'lm_head.weight' -> '../outside.safetensors' resolves to"),
    ],
    ids=["projector", "vision-heads", "index-outside"],
)
def test_build_refuses_in_one_line(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, expect: str
) -> None:
    if edit == "index":
        shutil.copy(ckpt / "model-00004-of-00003.safetensors", ckpt.parent / "outside.safetensors")
        _redirect(ckpt, "../outside.safetensors")
    else:
        _write_hostile(ckpt, edit)  # type: ignore[arg-type]
    out = tmp_path / "bundle"
    code, err = _build(capsys, "--checkpoint", str(ckpt), "--out", str(out))
    assert code == 2, err
    err = error_text(err)
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err, err
    assert not out.exists() and not list(tmp_path.glob(".bundle.partial-*"))
