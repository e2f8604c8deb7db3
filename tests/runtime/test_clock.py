"""hulurt.clock: exclusive nested stages, the same clock the generation loop and `huluexport bench` report.

The arithmetic is checked on a scripted time source (exact, whatever the load of the machine); the real
perf_counter only with bounds that hold however slow the machine is (sleeps are lower bounds, and the stages
cannot add up to more than the wall time around them)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from hulurt.clock import StageClock


def _ticks(*values: float) -> Iterator[float]:
    return iter(values)


def test_nested_stages_are_exclusive_and_add_up() -> None:
    # preprocess opens at 0, reduction 1..4, reduction again 6..6.5, preprocess closes at 10
    t = _ticks(0.0, 1.0, 4.0, 6.0, 6.5, 10.0)
    clock = StageClock(now=lambda: next(t))
    with clock("preprocess"):
        with clock("reduction"):
            pass
        with clock("reduction"):
            pass
    assert clock.seconds == {"preprocess": 10.0 - 3.0 - 0.5, "reduction": 3.5}
    assert sum(clock.seconds.values()) == 10.0  # nothing counted twice, nothing lost
    assert clock.get("vision") == 0.0


def test_three_levels_and_siblings() -> None:
    t = _ticks(0.0, 1.0, 2.0, 5.0, 7.0, 8.0, 9.0, 20.0)
    clock = StageClock(now=lambda: next(t))
    with clock("request"):  # 0..20
        with clock("vision"):  # 1..7, of which 2..5 in reduction
            with clock("reduction"):
                pass
        with clock("decode"):  # 8..9
            pass
    assert clock.seconds == {"request": 20.0 - 6.0 - 1.0, "vision": 6.0 - 3.0, "reduction": 3.0, "decode": 1.0}
    assert sum(clock.seconds.values()) == 20.0


def test_real_clock_bounds() -> None:
    clock = StageClock()
    t0 = time.perf_counter()
    with clock("preprocess"):
        time.sleep(0.01)
        with clock("reduction"):
            time.sleep(0.02)
    wall = time.perf_counter() - t0
    s = clock.seconds
    assert s["reduction"] >= 0.02 and s["preprocess"] >= 0.01  # sleeps are lower bounds
    assert s["preprocess"] + s["reduction"] <= wall  # measured inside the wall interval


def test_a_stage_that_raises_is_still_counted() -> None:
    t = _ticks(0.0, 2.0)
    clock = StageClock(now=lambda: next(t))
    try:
        with clock("vision"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert clock.seconds == {"vision": 2.0} and clock._inner == []
