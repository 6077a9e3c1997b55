"""What every benchmark shares: timing, percentiles, tables, targets, the machine, the record."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=description)
    parser.add_argument("--quick", action="store_true", help="fewer iterations: a smoke run, not a result")
    parser.add_argument(
        "--record", action="store_true", help=f"append this run (date, machine, tables) to {RESULTS_PATH}"
    )
    return parser


# --- timing -------------------------------------------------------------------------


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    """No garbage collection inside: a collection would land on whichever batch runs."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_calls(fn: Callable[[object], object], arg: object, n: int) -> list[int]:
    """Nanoseconds taken by each of ``n`` calls ``fn(arg)``."""
    clock = time.perf_counter_ns  # a local: one attribute lookup less per call
    samples = [0] * n
    for k in range(n):
        t0 = clock()
        fn(arg)
        samples[k] = clock() - t0
    return samples


def interleave(
    runners: dict[str, Callable[[int], list[int]]], total: int, batch: int
) -> dict[str, list[int]]:
    """Run every runner ``total`` times in batches of ``batch``, round-robin.

    Each round starts one runner later than the last, so no runner always follows the
    same one, and slow drift of the machine (frequency, neighbours) is shared by all.
    """
    names = list(runners)
    samples: dict[str, list[int]] = {name: [] for name in names}
    for r in range(-(-total // batch)):
        n = min(batch, total - r * batch)
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name] += runners[name](n)
    return samples


def two_cpus() -> tuple[int | None, int | None]:
    """Two CPUs this process may use, for the two sides of a ping-pong; (None, None),
    meaning "do not pin", if it has only one."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


@contextlib.contextmanager
def pinned_to(cpu: int | None) -> Iterator[None]:
    """Run this process on ``cpu`` alone inside (anywhere it could before, after)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_pinned(cpu: int | None, fn: Callable[..., object], *args: object) -> None:
    """A child process's target: pin it to ``cpu`` (None: leave it), then ``fn(*args)``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    fn(*args)


def percentile_us(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, dtype=np.int64), q)) / 1e3


def cpu_seconds_fine(pid: int) -> float:
    """CPU time of every live thread of process ``pid``, in ns resolution (schedstat),
    where /proc/<pid>/stat counts 10 ms ticks: too coarse for an idle process. A thread
    that exits between two readings takes its time with it."""
    total_ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited meanwhile
    return total_ns / 1e9


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: count fields after its ")".
    # fields[0] is field 3 (state), so utime (14) and stime (15) are 11 and 12.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S


def context_switches(pid: int) -> int:
    """Voluntary context switches of process ``pid``: how often it went to sleep."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


# --- reporting ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal: ``measured`` must not exceed ``limit`` (both in ``unit``)."""

    goal: str
    measured: float
    limit: float
    unit: str  # "x" (a ratio) or "%"

    @property
    def met(self) -> bool:
        return self.measured <= self.limit


def format_number(x: float) -> str:
    """Three significant digits, thousands separated: 0.0412, 4.10, 41.2, 4,120."""
    if x != x:  # NaN: not measured
        return "-"
    if abs(float(f"{x:.3g}")) >= 100:  # rounded first: 99.96 is "100", not "100."
        return f"{x:,.0f}"
    return f"{x:#.3g}"  # "#" keeps trailing zeros: 7.00, not 7


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, its columns padded so that it also reads well as plain text.

    Columns after the first are right-aligned (they hold numbers).
    """
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [str(cells[0]).ljust(widths[0])]
        padded += [str(cell).rjust(w) for cell, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def format_targets(targets: list[Target]) -> str:
    rows = [[t.goal, f"{format_number(t.measured)}{t.unit}", "met" if t.met else "MISSED"] for t in targets]
    return format_table(["Target", "Measured", "Result"], rows)


# --- the machine and the record -----------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])  # the first line is MemTotal
    return kib / (1 << 20)


def _version(package: str) -> str:
    # From the installed metadata, not by importing: importing torch takes seconds and
    # would change what the code under test sees (raycg's serde looks for it).
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> str:
    """CPU, cores, memory, kernel and the versions that matter, on one line."""
    usable = len(os.sched_getaffinity(0))
    return (
        f"{_cpu_model()}, {usable} of {os.cpu_count()} cores usable, {_memory_gib():.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"numpy {_version('numpy')}, torch {_version('torch')}"
    )


def warn_if_busy(limit: float = 0.5) -> float:
    """The 1-minute load average; says on stderr when other work will skew the figures."""
    load = os.getloadavg()[0]
    if load > limit:
        print(
            f"warning: load average {load:.2f}: other processes are busy, so figures will be noisy",
            file=sys.stderr,
        )
    return load


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record_run(section: str, entry: str, path: Path = RESULTS_PATH) -> None:
    """Append ``entry`` (Markdown) at the end of the ``## section`` of ``path``.

    The section is created at the end of the file if it does not exist, so each
    benchmark keeps its runs together whatever order the sections come in.
    """
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    heading = f"## {section}"
    if heading not in lines:
        lines += ["", heading]
    start = lines.index(heading) + 1
    end = next((k for k in range(start, len(lines)) if lines[k].startswith("## ")), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1  # insert after the section's last text, not after its trailing blanks
    block = ["", *entry.strip("\n").splitlines()]
    if end < len(lines) and lines[end].strip():
        block.append("")  # a blank line before the next section's heading
    lines[end:end] = block
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def join_or_kill(proc: Any, timeout_s: float = 10.0) -> None:
    """Join a child process; kill it if it has not exited within ``timeout_s``."""
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
