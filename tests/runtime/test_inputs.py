"""hulurt.inputs.build_inputs: files + question -> patches, grids, keep masks, token ids, compaction rows.

Token-count consistency (11.3), compression known answers on real arrays (6.2, 11.3), merge selection across
inputs (3.2), shared budget (3.3), and agreement with transformers' processor + our tokenizer on real files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hulurt import reduction
from hulurt.errors import UnsupportedInputError
from hulurt.inputs import InputOptions, build_inputs
from hulurt.media import frames_to_media, image_from_array, load_media
from hulurt.preprocess import plan_sizes
from hulurt.tokenizer import Tokenizer
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
IMAGE_ID = 290


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_file(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    p = tmp_path_factory.mktemp("img") / "xray.png"
    Image.fromarray(rng.integers(0, 256, (200, 150), dtype=np.uint8)).save(p)
    return p


def _expanded(prompt: str, counts: list[int]) -> str:
    pieces = prompt.split("<image>")
    return pieces[0] + "".join("<image>" * n + p for n, p in zip(counts, pieces[1:]))


def test_single_image(tok, png):
    r = build_inputs([png], "Describe this image in detail.", tok, IMAGE_ID)
    assert (
        r.prompt
        == "<|im_start|>user\n<image>\nDescribe this image in detail.<|im_end|>\n<|im_start|>assistant\n"
    )
    (v,) = r.visuals
    # PIL swap: a 150 (W) x 200 (H) file is planned as if H=150, W=200 (docs/model.md §3.4)
    assert v.grid_thw == (1, 11, 14) and v.merge_size == 1 and v.modal == "image"
    assert v.patches.shape == (1, 154, 1, 588) and v.patches.dtype == np.float32 and v.patches.std() > 1e-2
    assert r.input_ids.shape[0] == 1 and r.input_ids.dtype == np.int64
    assert r.input_ids[0].tolist() == tok.encode(_expanded(r.prompt, [154]))
    assert r.n_visual_tokens == r.n_kept == 154 and r.visual_rows.tolist() == list(range(154))
    straight = build_inputs([png], "Q", tok, IMAGE_ID, InputOptions(pil_size_swap=False))
    assert straight.visuals[0].grid_thw == (1, 14, 11)


def test_token_count_consistency_mixed_request(tok, png):
    """image + CT volume + video: every input gets m = 2 (HF rule), the budget is shared, and the number of
    image ids == sum of merged tokens == rows to keep (no compression)."""
    rng = np.random.default_rng(1)
    video = frames_to_media(rng.integers(0, 256, (4, 60, 80, 3), dtype=np.uint8), [0.0, 1.0, 2.0, 3.0])
    r = build_inputs([png, ANATOMICAL, video], "Compare.", tok, IMAGE_ID)
    assert r.merge_sizes.tolist() == [2, 2, 2] and r.modals == ["image", "video", "video"]
    assert r.grid_thw[:, 0].tolist() == [1, 25, 4]
    merged = int(sum(t * (gh // 2) * (gw // 2) for t, gh, gw in r.grid_thw))
    assert int((r.input_ids == IMAGE_ID).sum()) == merged == r.n_visual_tokens == r.n_kept
    sizes = plan_sizes([(200, 150), (33, 41), (60, 80)], [1, 25, 4], [2, 2, 2], [True, False, False])
    assert [(gh * 14, gw * 14) for _, gh, gw in r.grid_thw] == sizes
    # volume: no timestamps; video: timestamps
    assert (
        "<image>,<image>" in r.prompt and "Time 3.0s:<image>\n" in r.prompt and r.prompt.count("Time ") == 4
    )
    assert r.input_ids[0].tolist() == tok.encode(_expanded(r.prompt, [v.tokens for v in _per_frame(r)]))
    assert r.pixel_values().shape == (
        sum(v.patches.shape[0] * v.patches.shape[1] * 4 for v in r.visuals),
        588,
    )


class _F:
    def __init__(self, tokens: int) -> None:
        self.tokens = tokens


def _per_frame(r):
    return [_F(int(c)) for v in r.visuals for c in v.kept_per_frame]


def _video_frames() -> np.ndarray:
    """3 frames at 112x112 (m=2 -> 4x4 merged tokens, no resize): frame 1 = frame 0 except the 28x28 block of
    merged token 6 (row 1, col 2); frame 2 = frame 1 (static)."""
    rng = np.random.default_rng(3)
    f0 = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    f1 = f0.copy()
    f1[28:56, 56:84] = 255 - f1[28:56, 56:84]
    return np.stack([f0, f1, f1.copy()])


@pytest.mark.parametrize("mode", ["bf16", "fp32"])
def test_compression_known_answer(tok, mode):
    frames = _video_frames()
    media = frames_to_media(frames, [0.0, 1.0, 2.0])
    r = build_inputs([media], "Q", tok, IMAGE_ID, InputOptions(compression=True, compression_mode=mode))
    (v,) = r.visuals
    assert v.grid_thw == (3, 8, 8) and v.keep.shape == (3, 16)
    expected = np.zeros((3, 16), bool)
    expected[0] = True
    expected[1, 6] = True  # only the changed block
    expected[2, 0] = True  # static frame: exactly its top-left token (min_tokens = 1)
    np.testing.assert_array_equal(v.keep, expected)
    assert r.visual_rows.tolist() == [*range(16), 16 + 6, 32]
    assert v.kept_per_frame.tolist() == [16, 1, 1]
    assert int((r.input_ids == IMAGE_ID).sum()) == r.n_kept == 18 and r.n_visual_tokens == 48
    # the stamps and separators stay (6.3): each frame keeps its "Time X.Xs:" text
    assert r.prompt.count("Time ") == 3
    assert r.input_ids[0].tolist() == tok.encode(_expanded(r.prompt, [16, 1, 1]))
    # the keep mask is exactly the oracle's on the same patches
    oracle = reduction.keep_mask(v.patches.reshape(3, 16, -1), 0.1, 1, mode)
    np.testing.assert_array_equal(v.keep, oracle)


def test_compression_off_and_images_never_compressed(tok):
    frames = _video_frames()
    off = build_inputs([frames_to_media(frames)], "Q", tok, IMAGE_ID)
    assert off.visuals[0].keep.all() and off.n_kept == 48
    img = image_from_array(frames[0])
    r = build_inputs([img, img], "Q", tok, IMAGE_ID, InputOptions(compression=True))
    assert all(v.keep.all() for v in r.visuals)  # two identical images: nothing pruned (6.4)


def test_compression_on_a_real_volume(tok):
    """anatomical.nii with duplicated slices (original profile, 180 of 25): repeated slices keep 1 token."""
    r = build_inputs(
        [ANATOMICAL],
        "Q",
        tok,
        IMAGE_ID,
        InputOptions(compression=True),
        reader_options={"nifti": {"profile": "original"}},
    )
    (v,) = r.visuals
    assert v.grid_thw[0] == 180
    kept = v.kept_per_frame
    slices = load_media(ANATOMICAL, profile="original").info["slices"]
    dup = [t for t in range(1, 180) if slices[t] == slices[t - 1]]
    assert len(dup) > 100 and (kept[dup] == 1).all()
    assert kept[0] == v.n_groups and kept.sum() == r.n_kept < r.n_visual_tokens
    assert int((r.input_ids == IMAGE_ID).sum()) == r.n_kept


def test_visual_rows_offsets_across_inputs(tok):
    frames = _video_frames()
    a = frames_to_media(frames)
    b = frames_to_media(frames[::-1].copy())
    r = build_inputs([a, b], "Q", tok, IMAGE_ID, InputOptions(compression=True, compression_mode="fp32"))
    ka, kb = (v.keep.reshape(-1) for v in r.visuals)
    expected = np.concatenate([np.flatnonzero(ka), 48 + np.flatnonzero(kb)])
    np.testing.assert_array_equal(r.visual_rows, expected)
    np.testing.assert_array_equal(r.keep_mask, np.concatenate([ka, kb]))


def test_text_only(tok):
    r = build_inputs([], "hello", tok, IMAGE_ID)
    assert r.prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert r.visuals == () and r.n_kept == 0 and r.pixel_values().shape == (0, 588)
    assert r.input_ids[0].tolist() == tok.encode(r.prompt)


def test_history_and_system(tok, png):
    hist = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    r = build_inputs(
        [png],
        "again",
        tok,
        IMAGE_ID,
        InputOptions(add_system_prompt=True, system_prompt="You are a careful radiologist."),
        history=hist,
    )
    assert r.prompt.startswith(
        "<|im_start|>system\nYou are a careful radiologist.<|im_end|>\n<|im_start|>user\nHi"
    )
    assert r.prompt.endswith("<|im_start|>user\n<image>\nagain<|im_end|>\n<|im_start|>assistant\n")


def test_question_with_literal_placeholder_is_text(tok, png):
    """`<image>` typed in the question is text, not a placeholder: the image ids are exactly the file's."""
    typed = build_inputs([png], "what is <image>?", tok, IMAGE_ID)
    plain = build_inputs([png], "what is this?", tok, IMAGE_ID)
    assert (typed.input_ids == IMAGE_ID).sum() == (plain.input_ids == IMAGE_ID).sum() == 154
    assert tok.decode(typed.input_ids[0], skip_special_tokens=False).count("<image>") == 155


def test_bad_file_surfaces_unsupported_input(tok, tmp_path):
    p = tmp_path / "x.docx"
    p.write_bytes(b"PK..")
    with pytest.raises(UnsupportedInputError) as e:
        build_inputs([p], "Q", tok, IMAGE_ID)
    assert str(p) in str(e.value)


@pytest.mark.hf
def test_pixels_match_transformers_processor(tok, png):
    """The whole request's pixel_values == transformers' VideoLLaMA3 image processor given the same frames,
    Hulu-Med's constants and the request budget (CT slice + PNG, m = 1 since no video is present)."""
    mod = pytest.importorskip("transformers.models.video_llama_3.image_processing_pil_video_llama_3")
    r = build_inputs([CT_SMALL, png], "Q", tok, IMAGE_ID, InputOptions(pil_size_swap=False))
    assert r.merge_sizes.tolist() == [1, 1]
    proc = mod.VideoLlama3ImageProcessorPil(
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        merge_size=1,
        size={"shortest_edge": 16 * 196, "longest_edge": 16384 * 196 // 2},
    )
    frames = [
        np.repeat(load_media(CT_SMALL).frames[0], 3, axis=2),
        np.repeat(load_media(png).frames[0], 3, axis=2),
    ]
    ref = proc(images=frames, return_tensors="np")
    np.testing.assert_array_equal(r.pixel_values(), ref["pixel_values"])
    np.testing.assert_array_equal(r.grid_thw, ref["image_grid_thw"])
