"""End to end: hulurt's greedy tokens == the reference model's `generate` (PyTorch, fp32) for 16 new tokens on
tiny fp32 bundles (Qwen2 and Qwen3), for text, a 2-D image, a NIfTI volume, a DICOM series and a video, with
token reduction on and off; the number of visual tokens kept after reduction matches the reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from e2e.bundles import bundle, checkpoint

N_NEW = 16
KINDS = ("qwen2", "qwen3")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files: a PNG, nibabel's anatomical MR volume, a 4-slice CT series from pydicom's CT_small, an mp4."""
    import av
    import nibabel
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    # 2-D: non-square gray "radiograph" with structure (gradient + blob + noise)
    yy, xx = np.mgrid[0:70, 0:100]
    img = 120 + 60 * np.sin(xx / 9.0) + 40 * ((yy - 35) ** 2 + (xx - 60) ** 2 < 300) + rng.normal(0, 8, (70, 100))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / "xray.png")
    # NIfTI: a real MR volume shipped with nibabel
    nii = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    # DICOM series: CT_small with 4 slice positions; the lower-left quarter changes from slice to slice
    series = d / "ct_series"
    series.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for i in range(4):
        ds = base.copy()
        ds.ImagePositionPatient = [float(v) for v in base.ImagePositionPatient[:2]] + [float(-100 + 5 * i)]
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{i + 1}"
        px = base.pixel_array.copy()
        px[64:, :64] = np.clip(px[64:, :64].astype(np.int32) + 400 * i, -32768, 32767).astype(px.dtype)
        ds.PixelData = px.tobytes()
        ds.save_as(series / f"slice{3 - i}.dcm")  # file names in reverse: sorting must use the position
    # video: static background, a bright square moving right, 8 frames at 2 fps
    vid = d / "clip.mp4"
    with av.open(str(vid), "w") as out:
        stream = out.add_stream("mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        bg = rng.integers(40, 200, (64, 96, 3), dtype=np.uint8)
        for t in range(8):
            frame = bg.copy()
            frame[20:44, 8 + 8 * t : 32 + 8 * t] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return {"image": d / "xray.png", "volume_nifti": nii, "volume_dicom": series, "video": vid}


@pytest.fixture(scope="module", params=KINDS)
def pair(request: pytest.FixtureRequest):
    """(runtime Model, reference HuluMed in fp32) for one tiny checkpoint/bundle."""
    import hulurt

    from huluexport.reference.weights import load_model

    kind = request.param
    model = hulurt.load(bundle(kind), provider="cpu", threads=2)
    ref = load_model(checkpoint(kind), dtype="float32")
    assert model.facts.reduction_enabled == ref.cfg.reduction.enabled
    return kind, model, ref


def reference_tokens(ref, model, question: str, files: dict, reduce: bool) -> tuple[list[int], int]:
    """The reference's greedy tokens and its kept visual tokens, from the same hulurt.inputs as the runtime
    (un-reduced ids; the reference applies token reduction itself, docs/model.md §6.2)."""
    from huluexport.reference.model import VisualInput

    full = model.inputs(question, token_reduction=False, **files)
    visuals = [
        VisualInput(v.patches.reshape(v.patches.shape[0], -1, v.patches.shape[-1]),  # [T, G, g, 588] -> [T, n, 588]
                    grid=(v.grid_thw[1], v.grid_thw[2]), merge=v.merge_size, modal=v.modal)
        for v in full.visuals
    ]
    ref.cfg = ref.cfg.replace(reduction=dataclasses.replace(ref.cfg.reduction, enabled=reduce))
    ids = torch.from_numpy(full.input_ids[0])
    kept = int(ref.prepare_inputs(ids, visuals).keep.sum()) if visuals else 0
    toks = ref.generate(ids, visuals, max_new_tokens=N_NEW, eos=())
    logits = ref.prefill_logits(ids, visuals)[-1]
    assert float(logits.std()) > 1e-2  # non-degenerate model output (a repeated token is legitimate for random weights)
    return toks, kept


CASES = {
    "text": ("Describe the findings of a normal chest radiograph.", {}),
    "image": ("What is shown in this image?", {"images": ["image"]}),
    "nifti": ("Is there a lesion in this MRI volume?", {"volume": "volume_nifti"}),
    "dicom": ("Describe this CT series.", {"volume": "volume_dicom"}),
    "video": ("What moves in this video?", {"video": "video"}),
}


@pytest.mark.parametrize("reduce", [True, False], ids=["reduction-on", "reduction-off"])
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_equal_reference(pair, media, case: str, reduce: bool) -> None:
    kind, model, ref = pair
    if case in ("text", "image") and not reduce:
        pytest.skip("text and single images are never reduced: reduction on/off is the same request")
    question, spec = CASES[case]
    files = {k: ([media[x] for x in v] if isinstance(v, list) else media[v]) for k, v in spec.items()}
    feed = model.prepare(question, token_reduction=reduce, **files)
    gen = model.run(feed, max_new_tokens=N_NEW, stop_ids=())
    for _ in gen:
        pass
    expect, kept = reference_tokens(ref, model, question, files, reduce)
    assert gen.token_ids == expect, f"{kind}/{case}: runtime {gen.token_ids} != reference {expect}"
    t = gen.timings
    assert t.visual_tokens_after == kept
    if case in ("nifti", "dicom", "video"):
        assert feed.visuals[0].merge == 2 and feed.visuals[0].patches.shape[0] > 1
        if reduce:
            assert t.visual_tokens_after < t.visual_tokens_before  # reduction really dropped tokens
        else:
            assert t.visual_tokens_after == t.visual_tokens_before
    if case != "text":
        assert t.visual_tokens_before > 0
    assert gen.text == model.tokenizer.decode(gen.token_ids)


def test_streamed_text_equals_decoded_text_with_multibyte_splits(pair) -> None:
    """Force a multi-byte answer through the real byte-level BPE tokenizer: every streamed piece is whole
    characters and the pieces add up to the decoded text."""
    from hulurt.tokenizer import StreamDecoder

    _, model, _ = pair
    text = "Lung 肺 – ölçü 🫁 ok"
    ids = model.tokenizer.encode(text)
    assert len(ids) > len(text.encode("utf-8")) // 2  # byte-level pieces: multi-byte chars span tokens
    assert any("\ufffd" in model.tokenizer.decode([i]) for i in ids)  # some token holds part of a character
    sd = StreamDecoder(model.tokenizer)
    pieces = [sd.push(i) for i in ids] + [sd.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == model.tokenizer.decode(ids)


def test_stream_iterator_equals_final_text(pair) -> None:
    _, model, _ = pair
    pieces: list[str] = []
    gen = model.stream("Describe the kidneys.", max_new_tokens=24, stop_ids=(), on_text=pieces.append)
    streamed = "".join(gen)
    assert streamed == "".join(pieces) == gen.text == model.tokenizer.decode(gen.token_ids)
    assert len(gen.token_ids) == 24 and gen.timings.decode_tok_s > 0
