"""The visual rows assembled on the decoder's device (hulurt.device_rows) on onnxruntime's CPU provider: the same
rows as the host gather (exactly), the same tokens through the gqa-static prefill with vision calls and prefill
chunks that cut through the rows, and auto leaving the host path on the CPU."""

from __future__ import annotations

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt.device_rows import RowsOnDevice, graph_path
from hulurt.errors import ContractError
from hulurt.media import Media


@pytest.fixture(scope="module")
def gqa_bundle():
    return bundle("qwen2", gqa=True)


def _load(b, **kw):
    return hulurt.load(b, provider="cpu", threads=1, verify_hashes=False, decoder_form="gqa-static", **kw)


def _media() -> list[Media]:
    """An image and a 6-frame video whose lower half changes from frame 3 on: token reduction drops rows."""
    rng = np.random.default_rng(11)
    image = Media(rng.integers(0, 256, size=(1, 56, 84, 3), dtype=np.uint8), "image", "scan.png")
    frames = np.repeat(rng.integers(0, 256, size=(1, 56, 56, 3), dtype=np.uint8), 6, axis=0)
    frames[3:, 28:] = rng.integers(0, 256, size=(3, 28, 56, 3), dtype=np.uint8)
    return [image, Media(frames, "video", "clip")]


def test_rows_on_device_equal_the_host_gather(gqa_bundle) -> None:
    model = _load(gqa_bundle, device_rows=True)
    feed = model.prepare_media("What changes?", _media(), token_reduction=True)
    video = feed.visuals[1]
    assert video.keep is not None and 0 < video.keep.sum() < video.keep.size  # rows really dropped
    gen = model._gen(True)
    for batches in ([1, 1], [1, 4], [1, 6]):  # vision calls of 1, 4 (cuts the video) and all frames
        want = gen.visual_rows(feed.visuals, batches)
        got = gen.visual_rows(feed.visuals, batches, on_device=True)
        assert isinstance(got, RowsOnDevice) and got.shape == want.shape
        assert got.shape[0] == sum(v.tokens_after for v in feed.visuals)
        assert np.array_equal(got.numpy(), want), batches


def test_same_tokens_through_the_static_prefill(gqa_bundle) -> None:
    host = _load(gqa_bundle, device_rows=False, vision_batch=4, prefill_chunk=7)
    dev = _load(gqa_bundle, device_rows=True, vision_batch=4, prefill_chunk=7)
    whole = _load(gqa_bundle, device_rows=True)
    media = _media()

    def run(m):
        rows: list[np.ndarray] = []
        g = m.run(m.prepare_media("What changes?", media, token_reduction=True), max_new_tokens=10, stop_ids=(),
                  on_logits=lambda r: rows.append(np.array(r))).result()
        return g, rows

    want, want_rows = run(host)
    for m in (dev, whole):
        got, got_rows = run(m)
        assert got.token_ids == want.token_ids
        assert np.array_equal(got_rows[0], want_rows[0])  # the prefill saw the same visual rows, bit for bit
        assert got.timings.visual_tokens_after == want.timings.visual_tokens_after > 0
        assert m._gen(True)._rows is not None  # the device path ran
    assert host._gen(True)._rows is None
    # not a trivial pass: other pixels give other first logits through the same path
    media[1].frames[3:, :28] = 255 - media[1].frames[3:, :28]
    assert not np.array_equal(run(dev)[1][0], want_rows[0])


def test_auto_keeps_the_host_path_on_the_cpu_provider(gqa_bundle) -> None:
    model = _load(gqa_bundle)
    model.run(model.prepare_media("What changes?", _media()[:1]), max_new_tokens=2, stop_ids=()).result()
    assert model._gen(True)._rows is None


def test_row_slices_are_checked(gqa_bundle) -> None:
    model = _load(gqa_bundle, device_rows=True)
    feed = model.prepare_media("What changes?", _media()[:1])
    rows = model._gen(True).visual_rows(feed.visuals, [1], on_device=True)
    n = rows.rows
    assert rows.slice(3, 3) is None
    s = rows.slice(2, n)
    assert s.rows == n - 2 and s.ptr == rows.value.data_ptr() + 2 * rows.hidden * rows.dtype.itemsize
    with pytest.raises(ContractError, match=r"\[2, %d\)" % (n + 1)):
        rows.slice(2, n + 1)


def test_gather_graphs_ship_for_both_activation_dtypes() -> None:
    for dtype in ("float32", "float16"):
        assert graph_path(dtype).is_file()
