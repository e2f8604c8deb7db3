"""`init-checkpoint`: streamed safetensors shards (huluexport/checkpoint/stream_writer.py), random values in
pieces equal to random_tensor, the --out rules, the tokenizer at a real size's ids."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from huluexport.checkpoint import checkpoint_name, from_checkpoint, parameter_shapes
from huluexport.checkpoint.fixtures import OUTPUT_MARKER, build_tokenizer, write_checkpoint
from huluexport.checkpoint.random_weights import random_chunks, random_tensor
from huluexport.checkpoint.stream_writer import write_files
from huluexport.cli import main
from huluexport.config import SIZES


@pytest.mark.parametrize("shape", [(7,), (16,), (33,), (100, 37), (48, 64)])
@pytest.mark.parametrize("chunk", [16, 48, 100, 1 << 24])
@pytest.mark.parametrize("ref", ["decoder.layers.0.mlp.up_proj.weight", "decoder.norm.weight", "a.q_proj.bias"])
def test_random_chunks_equal_random_tensor(ref: str, shape: tuple[int, ...], chunk: int) -> None:
    pieces = [p.clone() for p in random_chunks(ref, shape, 5, chunk)]
    assert all(len(p) >= min(16, len(pieces[0])) for p in pieces)
    if chunk < 100 and shape[0] * (shape[1] if len(shape) > 1 else 1) > 2 * chunk:
        assert len(pieces) > 1  # the pieces path really ran
    assert torch.equal(torch.cat(pieces), random_tensor(ref, shape, 5).flatten())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_shards_are_save_file_bytes(tmp_path: Path, dtype: str) -> None:
    """Each streamed shard is byte-identical to safetensors' own save_file of random_tensor's values."""
    d = write_checkpoint(tmp_path / "c", "tiny", seed=3, dtype=dtype)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    refs = {checkpoint_name(r): (r, s) for r, s in parameter_shapes(SIZES["tiny"]).items()}
    by_file: dict[str, list[str]] = {}
    for name, f in index["weight_map"].items():
        by_file.setdefault(f, []).append(name)
    assert sorted(by_file) == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3, 4)]
    assert by_file["model-00004-of-00003.safetensors"] == ["lm_head.weight"]
    assert set(index["weight_map"]) == set(refs)
    torch_dtype = getattr(torch, dtype)
    total = 0
    for f, names in by_file.items():
        expect = {n: random_tensor(*refs[n], 3).to(torch_dtype).contiguous() for n in names}
        save_file(expect, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
        assert (d / f).read_bytes() == (tmp_path / "ref.safetensors").read_bytes(), f
        with safe_open(str(d / f), framework="pt") as h:
            assert h.metadata() == {"format": "pt"} and sorted(h.keys()) == sorted(names)
            for n in names:
                assert torch.equal(h.get_tensor(n), expect[n])
                total += expect[n].numel() * expect[n].element_size()
    assert index["metadata"]["total_size"] == total
    assert json.loads((d / OUTPUT_MARKER).read_text())["seed"] == 3


def test_stream_writer_pieces_two_workers(tmp_path: Path) -> None:
    """Many tensors in many pieces over two threads: every file reads back with safe_open, values equal."""
    shapes = {f"t{i}": ((i % 5) + 1, 16 * (i + 1) + 3) for i in range(12)}
    files = {tmp_path / "a.safetensors": list(shapes.items())[:7], tmp_path / "b.safetensors": list(shapes.items())[7:]}

    def value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        n = shape[0] * shape[1]
        return torch.arange(n, dtype=torch.float32).reshape(shape) * 0.5 + int(name[1:])

    def chunks(name: str, shape: tuple[int, ...]):
        flat = value(name, shape).flatten()
        for i in range(0, len(flat), 16):
            yield flat[i : i + 16]

    write_files(files, chunks, torch.float16, workers=2)
    for path, tensors in files.items():
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        assert (8 + n) % 8 == 0 and "__metadata__" not in json.loads(raw[8 : 8 + n])
        with safe_open(str(path), framework="pt") as h:
            for name, shape in tensors:
                assert torch.equal(h.get_tensor(name), value(name, shape).to(torch.float16))
    with pytest.raises(FileExistsError):  # never writes over a file
        write_files(files, chunks, torch.float16)


def test_stream_writer_error_stops(tmp_path: Path) -> None:
    def chunks(name: str, shape: tuple[int, ...]):
        if name == "bad":
            raise ValueError("no values for bad")
        yield torch.zeros(shape).flatten()

    files = {tmp_path / "x.safetensors": [("a", (4, 4)), ("bad", (2,)), ("c", (3,))]}
    with pytest.raises(ValueError, match="no values for bad"):
        write_files(files, chunks, torch.float32)


class _Run:
    def __init__(self, code: int, output: str) -> None:
        self.exit_code, self.output = code, output


def test_cli_out_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def _invoke(*args: str) -> _Run:  # the real entry point: errors are one line and exit 2
        with pytest.raises(SystemExit) as exc:
            main(["init-checkpoint", *args])
            raise SystemExit(0)
        cap = capsys.readouterr()
        return _Run(int(exc.value.code or 0), cap.err + cap.out)

    out = tmp_path / "c"
    r = _invoke("--out", str(out), "--seed", "1")
    assert r.exit_code == 0, r.output
    first = (out / "model-00001-of-00003.safetensors").read_bytes()
    r = _invoke("--out", str(out), "--seed", "2")  # our earlier output: replaced
    assert r.exit_code == 0, r.output
    assert (out / "model-00001-of-00003.safetensors").read_bytes() != first
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = _invoke("--out", str(foreign))
    assert r.exit_code == 2
    assert "non-empty directory that init-checkpoint did not write" in r.output and "--overwrite" in r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    r = _invoke("--out", str(foreign), "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (foreign / "notes.txt").exists() and from_checkpoint(foreign).name == "mine"
    (tmp_path / "file").write_text("x")
    r = _invoke("--out", str(tmp_path / "file"), "--overwrite")
    assert r.exit_code == 2 and "expected a directory" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _invoke("--out", str(empty)).exit_code == 0
    r = _invoke("--size", "7b", "--layout", "original", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--layers" in r.output and "Traceback" not in r.output
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("size", ["7b", "4b"])
def test_tokenizer_at_real_ids(size: str) -> None:
    t = SIZES[size].tokens
    tok = build_tokenizer(t)
    for content, idx in (("<|endoftext|>", t.endoftext), ("<|im_start|>", t.im_start), ("<|im_end|>", t.im_end),
                         ("<image>", t.image)):
        assert tok.token_to_id(content) == idx
    assert tok.get_vocab_size() <= SIZES[size].decoder.vocab
    text = "<|im_start|>user\nDescribe this image.<image><|im_end|>"
    ids = tok.encode(text).ids
    assert ids[0] == t.im_start and t.image in ids and ids[-1] == t.im_end
    assert tok.decode(ids, skip_special_tokens=False) == text
