"""One vision call's peak RSS on onnxruntime CPU is what hulurt.schedule's cost model plans (the tolerance
`vision-memory` of huluexport/tolerances.py), and the vision session hands its arena back after the call. In the
e2e tier because it reads the exporter's tolerance table (the runtime tier imports only hulurt)."""

from __future__ import annotations

from pathlib import Path

import hulurt
import numpy as np
import pytest
from e2e.bundles import bundle
from hulurt import schedule


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable VmHWM")
def test_vision_memory_as_planned_and_handed_back() -> None:
    """One vision call's peak RSS is what the cost model plans for onnxruntime CPU (the issue's 15 %), and the
    vision session hands its arena back after the call (backends/base.py, release_after_run)."""
    from hulurt.rope import vision_rope

    from huluexport.tolerances import get

    m = hulurt.load(bundle("qwen2"), provider="cpu", threads=1, verify_hashes=False)
    shape, dims = m.facts.shape, m.facts.dims
    assert shape is not None
    sess = m.session("vision")
    frames, side = 4, 40  # 1600 patches a frame: the scores dominate, as in a 512x512 slice at full width
    cos, sin = vision_rope(side, side, 2, dims.vision_head_dim)
    x = np.random.default_rng(0).standard_normal((frames, side * side // 4, 4, shape.patch_dim)).astype(np.float32)
    small_cos, small_sin = vision_rope(2, 2, 2, dims.vision_head_dim)
    sess.run({"pixel_patches": x[:1, :1], "rope_cos": small_cos, "rope_sin": small_sin})  # threads, kernels
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # VmHWM := VmRSS
    sess.run({"pixel_patches": x, "rope_cos": cos, "rope_sin": sin})
    peak, after = _status("VmHWM") - before, _status("VmRSS") - before
    planned = schedule.vision_activation_bytes(shape, frames, side * side, 0, 4, False)["total"] - x.nbytes
    tol = get("vision-memory", "fp32", "ort-cpu").max_rel
    assert tol is not None and abs(planned / peak - 1) <= tol, (planned, peak)
    assert after < 0.25 * peak, f"{after / 2**20:.0f} MiB of a {peak / 2**20:.0f} MiB call still held"
