"""Leak checks for tests and the chaos suite: what raycg could leave behind; and
:class:`CpuTwin`, raycg's CPU communicator asked for as a Communicator instance (the
CPU twin of a NCCL edge or collective, see ``_communicators``).

Used by tests/ and chaos/ after a graph's end, on both sides: new /dev/shm entries,
and, in this process and in each actor (:func:`actor_resources`, through
``__ray_call__``), raycg memfds still open, raycg segments still mapped and raycg
threads still running.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from ._communicators import CpuTwin as CpuTwin  # re-exported for tests and chaos

# Ray's own Compiled Graph names its semaphores after the creating pid; other sessions
# on the machine (a benchmark running Ray's graphs, say) create them, and they are not
# ours to answer for.
_PID_IN_NAME = re.compile(r"^sem\.(?:obj|hdr)(\d+)-")
# Python's multiprocessing names its semaphores sem.mp-*: created by test harnesses
# (ours included, in other pytest workers), never by raycg.
_MULTIPROCESSING = re.compile(r"^sem\.mp-")


def _session_pids() -> set[int]:
    """This process, and every process below this node's raylet (Ray's workers)."""
    ours = {os.getpid()}
    try:
        import ray

        node = ray._private.worker._global_node
        roots: set[int] = {p.process.pid for p in node.all_processes.get("raylet", [])} if node else set()
    except Exception:
        roots = set()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rfind(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    for pid in parents:
        p, seen = pid, 0
        while p in parents and seen < 64:
            if p in roots:
                ours.add(pid)
                break
            p, seen = parents[p], seen + 1
    return ours


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def new_shm_entries(before: set[str]) -> set[str]:
    """Entries of /dev/shm that appeared since ``before`` and belong to this session."""
    new = shm_entries() - before
    if not new:
        return new
    ours = _session_pids()
    kept = set()
    for name in new:
        if _MULTIPROCESSING.match(name):
            continue
        m = _PID_IN_NAME.match(name)
        if m is None or int(m.group(1)) in ours:
            kept.add(name)
    return kept


def raycg_fds() -> dict[str, str]:
    """This process's open fds on raycg segments (fd -> what it points to)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "memfd:raycg" in target:
            out[fd] = target
    return out


def raycg_threads() -> list[str]:
    """raycg's threads in this process, but the monitor and the transports' pidfd watch
    (which exit on their own once nothing is watched)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("raycg-") and t.name not in ("raycg-monitor", "raycg-peer-watch")
    ]


def raycg_mappings() -> list[str]:
    """This process's mappings of raycg segments (one line of /proc/self/maps each)."""
    with open("/proc/self/maps") as f:
        return [line.rstrip() for line in f if "memfd:raycg" in line]


def process_resources(_instance: object = None) -> dict[str, list[str]]:
    """What raycg holds in this process: open fds, mapped segments, threads. Runs on an
    actor as ``actor.__ray_call__.remote(process_resources)`` (the instance unused)."""
    return {"fds": sorted(raycg_fds().values()), "mappings": raycg_mappings(), "threads": raycg_threads()}


def actor_resources(actor: Any, timeout_s: float = 10.0) -> dict[str, list[str]]:
    """:func:`process_resources` of ``actor``'s process."""
    import ray

    ref: Any = actor.__ray_call__.remote(process_resources)
    got: dict[str, list[str]] = ray.get(ref, timeout=timeout_s)
    return got


def resources_left(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, list[str]]:
    """What ``after`` holds beyond ``before`` (by count: names repeat), empty kinds left out."""
    left = {}
    for kind, now in after.items():
        base = list(before.get(kind, []))
        extra = []
        for item in now:
            if item in base:
                base.remove(item)
            else:
                extra.append(item)
        if extra:
            left[kind] = extra
    return left
