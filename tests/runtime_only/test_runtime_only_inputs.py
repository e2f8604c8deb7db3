"""Inputs in a venv with only hulurt + its extras: no torch, transformers, onnx or huluexport may be imported,
and files still become model inputs (tokenizer built here with the `tokenizers` library)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FORBIDDEN = ("torch", "transformers", "onnx", "onnxscript", "huluexport")


def test_import_isolation_subprocess():
    code = (
        "import hulurt.preprocess, hulurt.inputs, hulurt.media, hulurt.prompt, hulurt.tokenizer, hulurt.reduction, sys;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(FORBIDDEN)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"hulurt input modules pulled in {out.stdout.strip()}"


def _tokenizer(tmp_path: Path):
    """A byte-level BPE with Hulu-Med's added tokens, trained in the test (tokenizers library only)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        ["Describe this scan. The liver lesion is small.", "Time 0.0s: user assistant"] * 3, trainer=trainer
    )
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")
        ]
    )
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    from hulurt.tokenizer import Tokenizer

    return Tokenizer.from_file(path)


def test_files_to_inputs_without_torch(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    nib = pytest.importorskip("nibabel")
    from hulurt.inputs import InputOptions, build_inputs

    tok = _tokenizer(tmp_path)
    image_id = tok.require_id("<image>")
    rng = np.random.default_rng(0)
    png = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(png)
    vol = rng.normal(0, 100, (40, 40, 6)).astype(np.float32)
    vol[..., 3] = vol[..., 2]  # a repeated slice
    nii = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nii)
    r = build_inputs([png, nii], "Describe this scan.", tok, image_id, InputOptions(compression=True))
    assert r.merge_sizes.tolist() == [2, 2] and r.grid_thw[:, 0].tolist() == [1, 6]
    assert r.visuals[1].kept_per_frame[3] == 1  # the repeated slice keeps only its first token
    assert int((r.input_ids == image_id).sum()) == r.n_kept < r.n_visual_tokens
    assert r.pixel_values().std() > 1e-2
    s = tok.stream(hide_think=True)
    ids = tok.encode("<think>hmm</think>The liver lesion is small.")
    assert "".join(s.push(i) for i in ids) + s.flush() == "The liver lesion is small."


def test_video_without_torch(tmp_path):
    av = pytest.importorskip("av")
    from hulurt.media import load_video

    p = tmp_path / "c.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            a = np.full((48, 64, 3), 20 * i, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    m = load_video(p, fps=1, backend="av")
    assert m.frames.shape == (2, 48, 64, 3) and m.timestamps == (0.0, 1.0)


def test_the_sampling_graph_ships_with_the_package():
    """hulurt/graphs/sampler.onnx is package data: an installed (not editable) hulurt has it and onnxruntime runs
    it, without onnx or huluexport in the venv."""
    ort = pytest.importorskip("onnxruntime")
    import hulurt
    from hulurt import device_sample
    from hulurt.contract import SAMPLER_PARAMS

    # inside the imported hulurt package: site-packages in the runtime-only venv (a wheel install: package data),
    # the source tree in the dev venv (editable)
    assert device_sample.GRAPH.is_file() and device_sample.GRAPH.parent.parent == Path(hulurt.__file__).resolve().parent
    sess = ort.InferenceSession(str(device_sample.GRAPH), providers=["CPUExecutionProvider"])
    row = np.linspace(-3.0, 3.0, 2000, dtype=np.float32).reshape(1, -1)
    values = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "greedy": 1.0, "uniform": 0.0}
    params = np.array([values[n] for n in SAMPLER_PARAMS], dtype=np.float64)
    token, exact = sess.run(None, {"logits": row, "seen_ids": np.zeros(1, np.int64), "params": params})
    assert int(token[0]) == 1999 and bool(exact[0])
