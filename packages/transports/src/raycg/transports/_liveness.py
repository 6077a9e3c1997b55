"""Is a peer process still alive?

Checked only on the slow path (a waiter that slept a whole slice), never per value.
A killed child that its parent has not reaped yet is a zombie: ``kill(pid, 0)`` still
succeeds for it, so we read its state from /proc instead. The start time read at
attach guards against the pid being reused by an unrelated process.
"""

from __future__ import annotations


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, or None if it is
    gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat[stat.rfind(b")") + 2 :].split()
    state = fields[0]
    if state in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


def is_alive(pid: int, start_time: int) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` still runs."""
    if pid <= 0:
        return True  # not attached yet: nothing to check
    now = process_start_time(pid)
    return now is not None and (start_time == 0 or now == start_time)
