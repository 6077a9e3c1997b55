"""Every transports test runs under a leak check: no /dev/shm entry, file descriptor,
raycg mapping or thread may outlive the test that made it."""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import sys
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker

import pytest

# Spawned children import the helpers by name; make that work in any import mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from transports_testing import open_fds, raycg_mappings  # noqa: E402

# gRPC's fork handlers (on by default) swap one of its eventfds for a new one in the
# parent at every os.fork(), which the fd check below would report as a leak.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker() -> None:
    # The first spawned child starts multiprocessing's resource tracker, whose pipe this
    # process keeps open for good: start it before any test takes its fd baseline.
    resource_tracker.ensure_running()


def _snapshot() -> tuple[set[str], dict[str, str], list[str], set[threading.Thread]]:
    multiprocessing.active_children()  # reaps finished children, drops their handles
    gc.collect()
    return set(os.listdir("/dev/shm")), open_fds(), raycg_mappings(), set(threading.enumerate())


# /dev/shm is shared by the whole node: other jobs (a Ray cluster's raylet, say, whose
# semaphores embed its pid) come and go while a test runs. Entries that match these, or
# that another process holds, are theirs.
_FOREIGN = re.compile(r"sem\.(obj|hdr)\d+-\d+|plasma.*")


def _foreign(name: str) -> bool:
    return bool(_FOREIGN.fullmatch(name)) or _held_by_another_process(name)


def _held_by_another_process(name: str) -> bool:
    """Whether some other live process maps or holds /dev/shm/``name`` open."""
    path = f"/dev/shm/{name}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                if path in f.read():
                    return True
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    return True
        except OSError:
            continue
    return False


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    shm0, fds0, maps0, threads0 = _snapshot()
    yield
    for t in set(threading.enumerate()) - threads0:
        t.join(10)  # a test's thread may still be unwinding; a stuck one is reported
    shm1, fds1, maps1, threads1 = _snapshot()
    problems = []
    shm = [n for n in sorted(shm1 - shm0) if not _foreign(n)]
    if shm:
        problems.append(f"new entries in /dev/shm: {shm}")
    fds = {fd: target for fd, target in fds1.items() if fds0.get(fd) != target}
    if fds:
        problems.append(f"new open file descriptors: {fds}")
    if sorted(maps1) != sorted(maps0):
        problems.append(f"raycg mappings before {sorted(maps0)}, after {sorted(maps1)}")
    if threads1 - threads0:
        problems.append(f"threads left running: {sorted(t.name for t in threads1 - threads0)}")
    if problems:
        pytest.fail("leak check: " + "; ".join(problems), pytrace=False)
