"""futex(2) on shared memory, through ctypes.

Why hand-written: no maintained Python package exposes futex on an arbitrary address
in a shared mapping (posix_ipc's semaphores are named objects that live in /dev/shm,
which is exactly what we must not leave behind). Two syscalls are all we need.

The futex words are *shared* (no FUTEX_PRIVATE_FLAG): waiters and wakers are in
different processes that map the same memfd.

Memory ordering. A sleeper does ``store(waiting=1); load(condition)`` and a waker does
``store(condition); load(waiting)``. That is Dekker's pattern, and x86 may reorder a
store with a later load, so each side calls :func:`fence` between the two. CPython has
no fence primitive; acquiring and releasing a ``threading.Lock`` executes locked
read-modify-write instructions (glibc's semaphore fast path), which are full barriers
on x86-64. As a second line of defence every sleep is bounded (the channel sleeps in
slices of at most ``liveness_interval_s``), so even a lost wake-up costs latency, never
a hang.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform
import threading

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
FUTEX_WAIT = 0
FUTEX_WAKE = 1
WAKE_ALL = 0x7FFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)  # CDLL releases the GIL during the call.
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _syscall_nr() -> int:
    if _SYS_FUTEX is None:
        raise OSError(f"futex is not supported on {platform.machine()!r}")
    return _SYS_FUTEX


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the u32 at ``addr`` equals ``expected``, for at most ``timeout_s``.

    Returns on a wake-up, on a value change, on a signal or at the timeout; the caller
    re-checks its condition in every case.
    """
    nr = _syscall_nr()
    if timeout_s <= 0:
        return
    if math.isinf(timeout_s):
        timeout_s = 3600.0
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    r = _syscall(
        ctypes.c_long(nr),
        ctypes.c_void_p(addr),
        ctypes.c_long(FUTEX_WAIT),
        ctypes.c_long(expected & 0xFFFFFFFF),
        ctypes.byref(ts),
        ctypes.c_void_p(None),
        ctypes.c_long(0),
    )
    if r == -1:
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(err, f"futex wait: {os.strerror(err)}")


def futex_wake(addr: int, count: int = WAKE_ALL) -> int:
    """Wake up to ``count`` processes sleeping on the u32 at ``addr``; return how many
    were woken."""
    nr = _syscall_nr()
    r = _syscall(
        ctypes.c_long(nr),
        ctypes.c_void_p(addr),
        ctypes.c_long(FUTEX_WAKE),
        ctypes.c_long(count),
        ctypes.c_void_p(None),
        ctypes.c_void_p(None),
        ctypes.c_long(0),
    )
    if r == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake: {os.strerror(err)}")
    return int(r)


_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier (see the module docstring for why this is one)."""
    _fence_lock.acquire()
    _fence_lock.release()
