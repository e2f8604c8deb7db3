"""Vision in batches of frames and prefill in chunks (hulurt.schedule) on a real tiny bundle (onnxruntime CPU):
the visual rows are bit-identical to one vision call for every batch size, and greedy tokens equal to one
prefill call for every chunk size, on a NIfTI volume whose token reduction drops rows across batch borders."""

from __future__ import annotations

from pathlib import Path

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt import schedule
from hulurt.reduction import kept_rows

nib = pytest.importorskip("nibabel")

FRAMES = 13


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 112x112x13 NIfTI: a still background with a blob that moves between slices, so token reduction keeps
    the moving tokens and drops the still ones in every slice after the first."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 400, size=(112, 112)).astype(np.float32)
    data = np.repeat(base[:, :, None], FRAMES, axis=2)
    for z in range(FRAMES):
        x = 8 * z % 96
        data[x:x + 16, 20:60, z] += rng.uniform(600, 1200, size=(16, 40)).astype(np.float32)
    path = tmp_path_factory.mktemp("vol") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.fixture(scope="module")
def model():
    return hulurt.load(bundle("qwen2"), provider="cpu", threads=1, vision_batch=FRAMES, prefill_chunk=10**6)


def test_batched_vision_rows_are_bit_identical(model, volume: Path) -> None:
    feed = model.prepare("Describe the scan.", volume=volume)
    (v,) = feed.visuals
    t = int(v.patches.shape[0])
    assert t == FRAMES and v.keep is not None
    # the mask drops rows inside frames that start a batch of 2, 3, 5 (its frame-to-frame comparison crosses
    # the border), and keeps some of them
    assert 0 < int(v.keep[1:].sum()) < v.keep[1:].size
    for b in (2, 3, 5):
        starts = range(b, t, b)
        assert any(not v.keep[s].all() for s in starts) and any(v.keep[s].any() for s in starts)
    gen = model._gen(True)
    one_call = kept_rows(gen.vision(v), v.keep)  # every frame in one vision call
    assert one_call.shape == (v.tokens_after, model.manifest.dims.hidden)
    for b in (1, 2, 3, 5, 12, FRAMES, 100):
        rows = gen.encode_visual(v, b)
        assert rows.dtype == one_call.dtype and np.array_equal(rows, one_call), f"vision batch {b}"


def test_chunked_prefill_gives_the_same_greedy_tokens(model, volume: Path) -> None:
    feed = model.prepare("Describe the scan.", volume=volume)
    n = int(feed.input_ids.size)
    one = model.run(feed, max_new_tokens=8, stop_ids=()).result()
    assert one.timings.prefill_chunk == n and len(set(one.token_ids)) > 1
    root = model.manifest.root
    for chunk in (1, 2, 7, 64, n - 1):
        m = hulurt.load(root, provider="cpu", threads=1, verify_hashes=False, vision_batch=3, prefill_chunk=chunk)
        got = m.run(feed, max_new_tokens=8, stop_ids=()).result()
        assert got.token_ids == one.token_ids, f"prefill chunk {chunk}"
        assert got.timings.prefill_chunk == chunk and got.timings.vision_batch == 3


def test_split_options_are_checked(tmp_path: Path) -> None:
    root = bundle("qwen2")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="vision_batch must be an integer >= 1"):
            hulurt.load(root, provider="cpu", verify_hashes=False, vision_batch=bad)
        with pytest.raises(ValueError, match="prefill_chunk must be an integer >= 1"):
            hulurt.load(root, provider="cpu", verify_hashes=False, prefill_chunk=bad)


def test_cli_refuses_a_zero_batch(capsys: pytest.CaptureFixture[str]) -> None:
    from hulurt.options import parse_run_args

    with pytest.raises(SystemExit) as e:
        parse_run_args([str(bundle("qwen2")), "--prompt", "x", "--vision-batch", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--vision-batch" in err and "must be an integer >= 1" in err and "Traceback" not in err


def test_default_split_follows_the_budget(model) -> None:
    shape = model.facts.shape
    assert shape is not None and shape.vision_heads == model.manifest.model["vision"]["heads"]

    def vis(t: int) -> int:
        return schedule.vision_activation_bytes(shape, t, 64, 0, 4, False)["total"]

    def pre(c: int, prompt: int = 500) -> int:
        return schedule.prefill_activation_bytes(shape, c, 4, False, past=prompt - c)["total"]

    # the largest batch / chunk whose cost fits, for budgets between two counts
    for t in (1, 7, 40):
        assert schedule.vision_batch_for(shape, 64, 64, 4, vis(t)) == t
        assert schedule.vision_batch_for(shape, 64, 64, 4, vis(t + 1) - 1) == t
    for c in (1, 33, 499):
        assert schedule.prefill_chunk_for(shape, 500, 4, pre(c)) == c
    assert schedule.prefill_chunk_for(shape, 500, 4, 10**12) == 500
    assert schedule.vision_batch_for(shape, 64, 64, 4, 0) == 1  # nothing fits: one frame at a time
    assert schedule.chunks(10, 4) == [(0, 4), (4, 8), (8, 10)] and schedule.chunks(3, None) == [(0, 3)]
    # the default (no option): one call for this tiny request, which fits a fifth of the available memory by far
    default = hulurt.load(model.manifest.root, provider="cpu", threads=1, verify_hashes=False)
    g = default.generate("hello", max_new_tokens=2, stop_ids=())
    assert g.timings.prefill_chunk == g.timings.prompt_tokens



def test_default_budget_on_the_cpu_provider_is_the_host_rule(model) -> None:
    """On onnxruntime's CPU provider the activations live in host memory: each piece's default budget is a fifth
    of MemAvailable (read per call, so it is compared with readings on either side of it)."""
    gen = model._gen(True)
    slack = 256 << 20  # MemAvailable moves with the host's other work between the three readings
    for piece in ("vision", "decoder", "no such piece"):
        before = schedule.default_budget()
        got = gen.budget_for(piece)
        after = schedule.default_budget()
        assert before is not None and after is not None and got is not None, piece
        assert min(before, after) - slack <= got <= max(before, after) + slack, piece
    assert not gen._budget_warned


def test_device_memory_query_without_a_gpu() -> None:
    """hulurt.device_memory asks the CUDA runtime (cudaMemGetInfo); with no GPU it answers None, whether the
    library loads (the runtime of the CUDA toolkit on the test host: with no driver it answers error 35) or not."""
    from hulurt import device_memory

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: tests/gpu checks the query's figures against torch")
    assert device_memory.memory(0) is None and device_memory.free_bytes(0) is None
    assert device_memory.memory(3) is None
