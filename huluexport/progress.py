"""Progress a person can follow, and the time each phase took (docs/cli.md, "Progress").

Library code opens phases; the CLI chooses how they are shown:

    with phase("vision: save", total=nbytes, unit="B") as p:   # anywhere, any depth
        ...; p.advance(len(chunk)); p.note("tensor 3/40")

    with reporting("rich"):        # the CLI: "rich" (stderr is a terminal), "plain" (piped), "quiet" (-q)
        build(opts)                # phases show live; one summary line per phase at the end

Every phase records its wall time, its CPU time (time.process_time: every thread of the process, so a phase that
keeps two cores busy shows CPU > wall) and what it got done; `records()` hands them out as data (benchmarks build
their tables from it, `phase_table`). With no reporter (library use, tests) a phase still records and logs one
INFO line when it ends. Progress goes to stderr, never stdout (results go there).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

log = logging.getLogger(__name__)

MODES = ("rich", "plain", "quiet")
PLAIN_AFTER_S = 1.0  # plain mode: a phase gets its own lines once it has run this long (the summary lists all)
PLAIN_EVERY_S = 5.0  # plain mode: at most one progress line per phase this often
PLAIN_STILL_S = 30.0  # plain mode: a phase that reports no progress (a trace) says it is still running this often


# --------------------------------------------------------------------------------------------------
# Records and their text
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseRecord:
    """One finished phase."""

    name: str
    wall_s: float
    cpu_s: float  # process CPU time over the phase (all threads), time.process_time
    done: float  # items (or bytes, unit "B") done
    total: float | None
    unit: str
    depth: int  # 0: top level; 1: opened inside another phase, ...
    ok: bool  # False: the phase ended with an exception

    @property
    def cpu_per_wall(self) -> float | None:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else None

    @property
    def rate(self) -> float | None:
        """Units per second of wall time (None when nothing was counted)."""
        return self.done / self.wall_s if self.done and self.wall_s > 0 else None

    def amount(self) -> str:
        return amount_text(self.done, self.unit) if self.done else ""


def amount_text(n: float, unit: str) -> str:
    if unit == "B":
        for div, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if n >= div:
                return f"{n / div:.2f} {name}"
        return f"{n:.0f} B"
    return f"{n:,.0f} {unit}".rstrip()


def rate_text(r: float | None, unit: str) -> str:
    if r is None:
        return ""
    if unit == "B":
        return f"{r / 1e6:.1f} MB/s"
    return f"{r:,.1f} {unit or 'items'}/s"


def seconds_text(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s"


def summary(recs: list[PhaseRecord] | None = None, table: bool = False) -> str:
    """One line per phase (name, wall, CPU, amount, rate), a total, and with `table` the phase table."""
    recs = records() if recs is None else recs
    if not recs:
        return ""
    width = max(len("  " * r.depth + r.name) for r in recs)
    lines = []
    for r in recs:
        extra = "  ".join(x for x in (r.amount(), rate_text(r.rate, r.unit), "" if r.ok else "FAILED") if x)
        lines.append(f"  {'  ' * r.depth + r.name:{width}}  {r.wall_s:7.2f} s  CPU {r.cpu_s:7.2f} s"
                     + (f"  {extra}" if extra else ""))
    top = [r for r in recs if r.depth == 0]
    wall, cpu = sum(r.wall_s for r in top), sum(r.cpu_s for r in top)
    lines.insert(0, f"{len(recs)} phases in {seconds_text(wall)} (CPU {seconds_text(cpu)}):")
    if table:
        lines += ["", phase_table(recs)]
    return "\n".join(lines)


def phase_table(recs: list[PhaseRecord] | None = None) -> str:
    """The phases as a markdown table: phase | wall s | CPU s | CPU/wall | amount (nested phases indented)."""
    recs = records() if recs is None else recs
    rows = ["| phase | wall s | CPU s | CPU/wall | amount |", "|---|---:|---:|---:|---|"]
    for r in recs:
        ratio = f"{r.cpu_per_wall:.2f}" if r.cpu_per_wall is not None else ""
        amount = ", ".join(x for x in (r.amount(), rate_text(r.rate, r.unit)) if x)
        name = "&nbsp;&nbsp;" * r.depth + r.name.replace("|", "/")
        rows.append(f"| {name} | {r.wall_s:.2f} | {r.cpu_s:.2f} | {ratio} | {amount} |")
    top = [r for r in recs if r.depth == 0]
    wall, cpu = sum(r.wall_s for r in top), sum(r.cpu_s for r in top)
    rows.append(f"| **total** | {wall:.2f} | {cpu:.2f} | {cpu / wall if wall > 0 else 0:.2f} | |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


class Phase:
    """A running phase: `advance` (thread-safe), `set_total`, `note`. Made by `phase()`."""

    def __init__(self, name: str, total: float | None, unit: str, depth: int) -> None:
        self.name, self.unit, self.depth = name, unit, depth
        self.total = total
        self.done = 0.0
        self.text = ""  # the latest note
        self._lock = threading.Lock()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def advance(self, n: float = 1) -> None:
        with self._lock:
            self.done += n
        rep = _reporter
        if rep is not None:
            rep.advanced(self)

    def set_total(self, total: float | None) -> None:
        self.total = total
        rep = _reporter
        if rep is not None:
            rep.advanced(self)

    def note(self, text: str) -> None:
        """A short status (e.g. the tensor or file at hand) shown next to the phase's name."""
        self.text = text
        rep = _reporter
        if rep is not None:
            rep.noted(self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def status(self) -> str:
        """"12.0 of 40.0 MB, 35.2 MB/s, 1 s left" (the parts that are known)."""
        if not self.done and self.total is None:
            return ""
        done = amount_text(self.done, self.unit)
        parts = [f"{done} of {amount_text(self.total, self.unit)}" if self.total else done]
        el = self.elapsed
        rate = self.done / el if self.done and el > 0 else None
        if rate:
            parts.append(rate_text(rate, self.unit))
            if self.total and self.total > self.done:
                parts.append(f"{seconds_text((self.total - self.done) / rate)} left")
        return ", ".join(parts)

    def record(self, ok: bool) -> PhaseRecord:
        return PhaseRecord(self.name, time.perf_counter() - self.t0, time.process_time() - self.c0, self.done,
                           self.total, self.unit, self.depth, ok)


class _Idle(Phase):
    """What `current()` returns outside any phase: accepts everything, shows nothing."""

    def advance(self, n: float = 1) -> None:
        pass

    def set_total(self, total: float | None) -> None:
        pass

    def note(self, text: str) -> None:
        pass


_lock = threading.Lock()
_records: list[PhaseRecord] = []
_open: list[Phase] = []
_reporter: _Reporter | None = None
_IDLE = _Idle("(no phase)", None, "", 0)


@contextmanager
def phase(name: str, total: float | None = None, unit: str = "") -> Iterator[Phase]:
    """Time a phase and show it (when a reporter is active); the record is kept even when it raises."""
    with _lock:
        p = Phase(name, total, unit, len(_open))
        _open.append(p)
    rep = _reporter
    if rep is not None:
        rep.started(p)
    ok = False
    try:
        yield p
        ok = True
    finally:
        rec = p.record(ok)
        with _lock:
            if p in _open:
                _open.remove(p)
            _records.append(rec)
        log.info("%s: %.2f s wall, %.2f s CPU%s%s", rec.name, rec.wall_s, rec.cpu_s,
                 f", {rec.amount()}" if rec.done else "", "" if ok else " (failed)")
        if rep is not None:
            rep.records.append(rec)
            rep.ended(p, rec)


def current() -> Phase:
    """The innermost open phase (deep code advances it without being handed it), or one that ignores all."""
    with _lock:
        return _open[-1] if _open else _IDLE


def records() -> list[PhaseRecord]:
    """Every phase finished since `reset()` (or the start of the process), in the order they ended."""
    with _lock:
        return list(_records)


def reset() -> None:
    with _lock:
        _records.clear()


# --------------------------------------------------------------------------------------------------
# Reporters
# --------------------------------------------------------------------------------------------------


class _Reporter:
    def __init__(self) -> None:
        self.records: list[PhaseRecord] = []  # the phases that ended while this reporter was active

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def started(self, p: Phase) -> None: ...
    def advanced(self, p: Phase) -> None: ...
    def noted(self, p: Phase) -> None: ...
    def ended(self, p: Phase, rec: PhaseRecord) -> None: ...
    def show(self, text: str) -> None: ...


class _Quiet(_Reporter):
    pass


class _Plain(_Reporter):
    """Lines for a log: a phase is announced once it has run PLAIN_AFTER_S (so a quick phase, or a command that
    stops at once on bad input, prints nothing but its summary or its error), then a line at most every
    PLAIN_EVERY_S while it advances (every PLAIN_STILL_S when it does not), and a line when an announced phase
    ends."""

    def __init__(self, file: TextIO | None = None) -> None:
        super().__init__()
        self.file = file
        self.t0 = time.perf_counter()
        self.open: dict[int, Phase] = {}
        self.last: dict[int, float] = {}  # announced phases -> when their latest line printed
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="huluexport-progress", daemon=True)

    def _line(self, text: str) -> None:
        f = self.file or sys.stderr
        f.write(f"[{time.perf_counter() - self.t0:7.1f} s] {text}\n")
        f.flush()

    def _tick(self) -> None:
        while not self.done.wait(0.1):
            self._announce(PLAIN_AFTER_S)

    def _announce(self, after: float) -> None:
        now = time.perf_counter()
        with self.lock:
            for key, p in list(self.open.items()):
                if key not in self.last and p.elapsed >= after:
                    self.last[key] = now
                    self._line(f"{p.name} ...")
                elif key in self.last and now - self.last[key] >= PLAIN_STILL_S:
                    self.last[key] = now
                    status = p.status()
                    self._line(f"{p.name}: still running after {seconds_text(p.elapsed)}"
                               + (f", {status}" if status else "") + (f" ({p.text})" if p.text else ""))

    def stop(self) -> None:
        self.done.set()
        if self.ticker.is_alive():
            self.ticker.join()

    def started(self, p: Phase) -> None:
        with self.lock:
            self.open[id(p)] = p
            if not self.ticker.is_alive() and not self.done.is_set():
                self.ticker.start()  # on the first phase: a command without phases runs no thread

    def advanced(self, p: Phase) -> None:
        now = time.perf_counter()
        with self.lock:
            if id(p) not in self.last or now - self.last[id(p)] < PLAIN_EVERY_S:
                return
            self.last[id(p)] = now
            self._line(f"{p.name}: {p.status()}" + (f" ({p.text})" if p.text else ""))

    def noted(self, p: Phase) -> None:
        self.advanced(p)

    def ended(self, p: Phase, rec: PhaseRecord) -> None:
        with self.lock:
            self.open.pop(id(p), None)
            if self.last.pop(id(p), None) is None and rec.wall_s < PLAIN_AFTER_S:
                return  # never announced: the summary has it
            extra = "".join(f", {x}" for x in (rec.amount(), rate_text(rec.rate, rec.unit)) if x)
            state = "done" if rec.ok else "FAILED"
            self._line(f"{p.name}: {state} in {seconds_text(rec.wall_s)} (CPU {seconds_text(rec.cpu_s)}){extra}")

    def show(self, text: str) -> None:
        with self.lock:
            f = self.file or sys.stderr
            f.write(text + "\n")
            f.flush()


class _Rich(_Reporter):
    """rich's live display on stderr: one row per open phase (spinner, name and note, bar when the total is
    known, amount/rate/time left, elapsed); a finished phase becomes a printed line above the display."""

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        class Bar(BarColumn):  # only where the total is known: the spinner says a phase of unknown length runs
            def render(self, task: Any) -> Any:
                return super().render(task) if task.total is not None else Text("")

        class StatusColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                p = task.fields.get("phase")
                return Text(p.status() if p is not None else "", style="progress.data.speed")

        self.console = console if console is not None else Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            Bar(bar_width=30),
            StatusColumn(),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=8,
            # stdout carries results: routed through the display only when it is that same terminal
            redirect_stdout=_isatty(sys.stdout),
        )
        self.tasks: dict[int, Any] = {}
        self.running = False
        self.lock = threading.RLock()
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    # The display runs only while a phase is open: between phases (and in commands with none) stdout and stderr
    # are the terminal's own, so a command that streams text is never buffered by the display's proxies.
    def _live(self, on: bool) -> None:
        if on and not self.running:
            self.progress.start()
            self.running = True
            # log lines (-v) through the display's stderr proxy, so they print above it instead of through it
            if sys.stderr is not sys.__stderr__:
                for h in logging.getLogger().handlers:
                    if type(h) is logging.StreamHandler and h.stream is sys.__stderr__:
                        self._handlers.append((h, h.setStream(sys.stderr)))
        elif not on and self.running:
            for h, old in self._handlers:
                h.setStream(old)
            self._handlers.clear()
            self.progress.stop()
            self.running = False

    def stop(self) -> None:
        with self.lock:
            self._live(False)

    def _describe(self, p: Phase) -> str:
        from rich.markup import escape

        return escape(p.name) + (f" [dim]{escape(p.text)}[/]" if p.text else "")

    def started(self, p: Phase) -> None:
        with self.lock:
            self._live(True)
            self.tasks[id(p)] = self.progress.add_task(self._describe(p), total=p.total, phase=p)
            self.progress.refresh()  # shown now, not at the next tick

    def advanced(self, p: Phase) -> None:
        with self.lock:
            tid = self.tasks.get(id(p))
            if tid is not None:
                self.progress.update(tid, completed=p.done, total=p.total)

    def noted(self, p: Phase) -> None:
        with self.lock:
            tid = self.tasks.get(id(p))
            if tid is not None:
                self.progress.update(tid, description=self._describe(p))

    def ended(self, p: Phase, rec: PhaseRecord) -> None:
        from rich.markup import escape

        extra = "".join(f", {x}" for x in (rec.amount(), rate_text(rec.rate, rec.unit)) if x)
        mark = "[green]✓[/]" if rec.ok else "[red]✗[/]"
        with self.lock:
            tid = self.tasks.pop(id(p), None)
            if tid is not None:
                self.progress.remove_task(tid)
                self.progress.refresh()  # the display without it, before the line prints above the display
            self.console.print(
                f"{mark} {'  ' * rec.depth}{escape(rec.name)} [dim]{seconds_text(rec.wall_s)} "
                f"(CPU {seconds_text(rec.cpu_s)}){escape(extra)}[/]", highlight=False)
            if not self.tasks:
                self._live(False)

    def show(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)


@contextmanager
def reporting(mode: str, *, table: bool = False, file: TextIO | None = None, console: Any = None) -> Iterator[None]:
    """Show phases while the block runs: "rich" (live display; `console` defaults to rich's on stderr), "plain"
    (lines on `file`, default stderr), "quiet" (nothing). At the end, unless quiet or the block raised: one
    summary line per phase of the block (and with `table`, the phase table)."""
    global _reporter
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    rep: _Reporter = _Rich(console) if mode == "rich" else _Plain(file) if mode == "plain" else _Quiet()
    prev, _reporter = _reporter, rep
    rep.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        rep.stop()
        _reporter = prev
        if ok and rep.records and mode != "quiet":
            rep.show(summary(rep.records, table=table))


def pick_mode(quiet: bool, stream: TextIO | None = None) -> str:
    """The CLI's rule: quiet with -q, rich when `stream` (stderr) is a terminal, plain otherwise."""
    if quiet:
        return "quiet"
    return "rich" if _isatty(sys.stderr if stream is None else stream) else "plain"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no such method, or closed
        return False
