"""huluexport/progress.py: phases record wall and CPU time and amounts, advance from threads adds up, and the
three reporters (plain lines, rich live display, quiet) show what docs/cli.md says they show."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import threading
import time

import pytest

from huluexport import progress


@pytest.fixture(autouse=True)
def _fresh_records():
    progress.reset()
    yield
    progress.reset()


def test_advance_from_many_threads_adds_up() -> None:
    # a tiny switch interval makes threads interleave inside advance(): a count kept by an unlocked
    # read-modify-write that can be switched out between its read and its write loses updates here
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    out = io.StringIO()
    try:
        with progress.reporting("plain", file=out), progress.phase("count", total=8 * 20_000) as p:
            def work() -> None:
                for _ in range(20_000):
                    p.advance()

            threads = [threading.Thread(target=work) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(old)
    (rec,) = progress.records()
    assert rec.done == 8 * 20_000 and rec.total == 8 * 20_000
    assert "  count " in out.getvalue() and "160,000" in out.getvalue()  # its summary line


def _burn(seconds_cpu: float, spent: list[float]) -> None:
    """Hash until this thread has used `seconds_cpu` of CPU (hashlib releases the GIL on large buffers)."""
    block = b"x" * (1 << 20)
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds_cpu:
        hashlib.sha256(block).digest()
    spent.append(time.thread_time() - t0)


def test_phase_cpu_time_counts_every_thread_and_wall_counts_sleep() -> None:
    spent: list[float] = []
    with progress.phase("burn in 2 threads"):
        threads = [threading.Thread(target=_burn, args=(0.3, spent)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # the main thread only waits: its own CPU time is ~0
    with progress.phase("sleep"):
        time.sleep(0.4)
    burn, sleep = progress.records()
    # what the two workers used (each measured by its own thread clock) is in the phase's CPU time; the phase's
    # wall time is at least each worker's CPU time (they ran inside it). Both hold under any load.
    assert burn.cpu_s >= 0.9 * sum(spent) and sum(spent) >= 0.6
    assert burn.wall_s >= max(spent) * 0.99
    # a sleeping phase: wall >= the sleep, CPU a small part of it (nothing else of this process runs)
    assert sleep.wall_s >= 0.4 and sleep.cpu_s < 0.2
    assert burn.cpu_per_wall is not None and sleep.cpu_per_wall is not None
    assert burn.cpu_per_wall > sleep.cpu_per_wall


def test_no_reporter_still_times_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="huluexport.progress"):
        with progress.phase("write", total=3e6, unit="B") as p:
            p.advance(2e6)
            p.note("ignored without a reporter")
    (rec,) = progress.records()
    assert (rec.name, rec.done, rec.unit, rec.ok) == ("write", 2e6, "B", True)
    assert any(r.getMessage().startswith("write: ") and "2.00 MB" in r.getMessage() for r in caplog.records)
    assert progress.current().name == "(no phase)"  # outside any phase: the idle one, which ignores advances
    progress.current().advance(5)


def test_failed_phase_is_recorded_and_no_summary_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_AFTER_S", 0.1)
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with progress.reporting("plain", file=out):
            with progress.phase("quick"):
                pass
            with progress.phase("breaks late"):
                time.sleep(0.3)
                raise RuntimeError("x")
    quick, broken = progress.records()
    assert quick.ok and not broken.ok
    lines = out.getvalue().splitlines()
    assert [ln.split("] ", 1)[1] for ln in lines][0] == "breaks late ..."
    assert "breaks late: FAILED in" in lines[-1]  # the error is the last word, then: no summary
    assert not any("quick" in ln for ln in lines)


def test_plain_lines_for_phases_that_take_time(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    with progress.reporting("plain", file=out):
        with progress.phase("fast", total=1000) as p:
            for _ in range(1000):
                p.advance()  # done well within PLAIN_AFTER_S (1 s): no line of its own, only the summary's
        monkeypatch.setattr(progress, "PLAIN_AFTER_S", 0.2)
        monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.05)
        with progress.phase("save", total=4e6, unit="B") as p:
            time.sleep(0.5)  # announced by now
            for i in range(4):
                time.sleep(0.06)
                p.note(f"tensor {i}")
                p.advance(1e6)
    lines = out.getvalue().splitlines()
    head = next(i for i, ln in enumerate(lines) if " phases in " in ln)
    live = [ln.split("] ", 1)[1] for ln in lines[:head]]
    assert not any(ln.startswith("fast") for ln in live)
    assert live[0] == "save ..."
    prog = [ln for ln in live[1:-1] if ln.startswith("save: ") and " of 4.00 MB" in ln]
    assert prog and "MB/s" in prog[-1] and "(tensor" in prog[-1]
    assert live[-1].startswith("save: done in") and ", 4.00 MB, " in live[-1]
    # the summary: a header and one line per phase with wall and CPU seconds
    assert lines[head].startswith("2 phases in")
    assert lines[head + 1].split()[0] == "fast" and " s  CPU " in lines[head + 1]
    assert lines[head + 2].split()[0] == "save" and "4.00 MB" in lines[head + 2]


def test_plain_says_a_silent_phase_is_still_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_AFTER_S", 0.1)
    monkeypatch.setattr(progress, "PLAIN_STILL_S", 0.3)
    out = io.StringIO()
    with progress.reporting("plain", file=out), progress.phase("trace decoder"):
        time.sleep(1.5)  # no advance: like a trace, whose length is unknown
    live = [ln.split("] ", 1)[1] for ln in out.getvalue().splitlines() if ln.startswith("[")]
    assert live[0] == "trace decoder ..." and live[-1].startswith("trace decoder: done in")
    assert any(ln.startswith("trace decoder: still running after ") for ln in live[1:-1]), live


def test_quiet_prints_nothing_but_records(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.reporting("quiet"):
        with progress.phase("work", total=2) as p:
            p.advance(2)
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    assert [r.name for r in progress.records()] == ["work"]


def test_rich_renders_to_a_forced_terminal() -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system="standard")
    with progress.reporting("rich", console=console, table=True):
        with progress.phase("trace vision"):
            time.sleep(0.3)  # the spinner refreshes (8 per second) while the length is unknown
        with progress.phase("save", total=3e6, unit="B") as p:
            for _ in range(3):
                p.advance(1e6)
                time.sleep(0.15)
    text = buf.getvalue()
    assert "\x1b[" in text  # terminal control sequences: the live display ran
    assert "trace vision" in text and "✓" in text and "of 3.00 MB" in text
    assert "2 phases in" in text and "| phase | wall s | CPU s | CPU/wall | amount |" in text


def test_phase_table_is_markdown_with_a_total() -> None:
    recs = [
        progress.PhaseRecord("trace", 2.0, 3.0, 0, None, "", 0, True),
        progress.PhaseRecord("save", 1.0, 0.5, 2e9, 2e9, "B", 0, True),
        progress.PhaseRecord("hash", 0.5, 0.5, 1e9, None, "B", 1, True),
    ]
    rows = progress.phase_table(recs).splitlines()
    assert rows[0] == "| phase | wall s | CPU s | CPU/wall | amount |"
    assert rows[2] == "| trace | 2.00 | 3.00 | 1.50 |  |"
    assert rows[3] == "| save | 1.00 | 0.50 | 0.50 | 2.00 GB, 2000.0 MB/s |"
    assert rows[4].startswith("| &nbsp;&nbsp;hash |")
    assert rows[5] == "| **total** | 3.00 | 3.50 | 1.17 | |"  # nested phases are inside their parent's time


def test_pick_mode() -> None:
    assert progress.pick_mode(True, io.StringIO()) == "quiet"
    assert progress.pick_mode(False, io.StringIO()) == "plain"  # not a terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress.pick_mode(False, Tty()) == "rich"
    with pytest.raises(ValueError, match="progress mode"):
        with progress.reporting("loud"):
            pass


def test_quiet_and_verbose_exclude_each_other() -> None:
    r = subprocess.run([sys.executable, "-m", "huluexport.cli", "-q", "-v", "inspect", "."], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "-v/--verbose and -q/--quiet exclude each other" in r.stderr
    assert "Traceback" not in r.stderr
