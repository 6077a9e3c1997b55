"""futex(2) on shared memory, and a memory fence.

Why hand-written: no maintained Python package exposes futex on an arbitrary address
in a shared mapping (posix_ipc's semaphores are named objects that live in /dev/shm,
which is exactly what we must not leave behind). The syscalls and the fence are in C
(_native.c); this module is their Python face.

The futex words are *shared* (no FUTEX_PRIVATE_FLAG): waiters and wakers are in
different processes that map the same memfd.

Memory ordering. A sleeper does ``store(waiting=1); load(condition)`` and a waker does
``store(condition); load(waiting)``. That is Dekker's pattern, and x86 may reorder a
store with a later load, so each side calls :func:`fence` (a sequentially consistent
fence: ``mfence``) between the two. As a second line of defence every sleep is bounded
(the channel sleeps in slices of ``liveness_interval_s``, or longer ones while a pidfd
watch stands in for the liveness checks), so even a lost wake-up costs latency, never
a hang.
"""

from __future__ import annotations

from . import _native

WAKE_ALL = 0x7FFFFFFF

# (Bound as attributes, not by ``from ._native import``: import-linter cannot place
# names imported from a compiled module.)
fence = _native.fence
futex_wake = _native.futex_wake
# Add 1 to a futex word atomically and wake its sleepers: several processes bump the
# same word, and a Python read-modify-write could store a stale value back.
bump_and_wake = _native.bump_and_wake


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the u32 at ``addr`` equals ``expected``, for at most ``timeout_s``
    (the GIL is released meanwhile).

    Returns on a wake-up, on a value change, on a signal or at the timeout; the caller
    re-checks its condition in every case. (A Python frame on purpose: it is off the hot
    path, and tests and stack dumps see a waiter by its name.)
    """
    _native.futex_wait(addr, expected, timeout_s)


__all__ = ["WAKE_ALL", "bump_and_wake", "fence", "futex_wait", "futex_wake"]
