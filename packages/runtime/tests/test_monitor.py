"""runtime._monitor: which actor process is gone, without Ray."""

from __future__ import annotations

import os
import subprocess
import sys

from raycg.runtime import _monitor
from raycg.transports import process_start_time


def test_first_dead_finds_the_exited_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = (os.getpid(), process_start_time(os.getpid()) or 0)
    assert _monitor.first_dead({"me": me}) is None
    assert _monitor.first_dead({"me": me, "child": (child.pid, 1)}) == "child"


def test_a_reused_pid_counts_as_dead() -> None:
    me = os.getpid()
    assert _monitor.first_dead({"me": (me, (process_start_time(me) or 0) + 1)}) == "me"
