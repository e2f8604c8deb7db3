"""hulurt.clock: exclusive nested stages, the same clock the generation loop and `huluexport bench` report."""

from __future__ import annotations

import time

from hulurt.clock import StageClock


def test_nested_stages_are_exclusive_and_add_up() -> None:
    clock = StageClock()
    t0 = time.perf_counter()
    with clock("preprocess"):
        time.sleep(0.01)
        with clock("reduction"):
            time.sleep(0.02)
        with clock("reduction"):
            pass
    wall = time.perf_counter() - t0
    s = clock.seconds
    assert set(s) == {"preprocess", "reduction"}
    assert s["reduction"] >= 0.02 and s["preprocess"] >= 0.01  # sleeps are lower bounds
    assert abs(s["preprocess"] + s["reduction"] - wall) < 1e-3  # nothing counted twice, nothing lost
    assert clock.get("vision") == 0.0


def test_a_stage_that_raises_is_still_counted() -> None:
    clock = StageClock()
    try:
        with clock("vision"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert clock.seconds["vision"] >= 0.0 and clock._inner == []
