"""Is a peer process still alive?

Checked only on the slow path (a waiter that slept a whole slice), never per value;
and where the kernel has pidfds, a process that exits wakes its waiters at once
(:func:`watch`, below), so that they need not wake up to check.
A killed child that its parent has not reaped yet is a zombie: ``kill(pid, 0)`` still
succeeds for it, so we read its state from /proc instead. The start time read at
attach guards against the pid being reused by an unrelated process.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
from collections.abc import Callable


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


# --- a pidfd watch: wakes sleepers when the process they wait for exits ---------------
#
# Why: a channel wait must notice a dead peer, and checking /proc between short sleep
# slices costs an idle graph ten wake-ups a second per waiter. Instead one daemon thread
# per process (alive while anything is watched) holds a pidfd (pidfd_open(2), Linux >=
# 5.3) per watched process and sleeps in poll(2); when one exits, it marks it dead and
# calls each watcher's ``wake``, which bumps the futex word its endpoint sleeps on. A
# waiter whose peers are all watched can then sleep in long slices. Hand-written: no
# maintained library offers a pidfd watch (psutil polls).

# Re-entrant: a collection inside watch() (or in the thread) may finalize an endpoint,
# whose close() unwatches, on the same thread.
_lock = threading.RLock()
_watched: dict[tuple[int, int], _Watched] = {}  # (pid, start time) -> its pidfd and wakers
_thread: threading.Thread | None = None
_keys = itertools.count()
# Wakes the thread to look at _watched again; one per process, for its life, so that
# watch/unwatch may write it without holding the lock the thread holds.
_WAKE_FD = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class _Watched:
    __slots__ = ("dead", "fd", "wakers")

    def __init__(self, fd: int, dead: bool):
        self.fd, self.dead = fd, dead
        self.wakers: dict[int, Callable[[], None]] = {}


class PeerWatch:
    """One watcher's hold on a watched process (:func:`watch`); ``dead`` once it exited."""

    __slots__ = ("_key", "_watched", "pid")

    def __init__(self, pid: int, watched: _Watched, key: int):
        self.pid, self._watched, self._key = pid, watched, key

    @property
    def dead(self) -> bool:
        return self._watched.dead

    def close(self) -> None:
        """Stop watching (idempotent); the pidfd goes with the process's last watcher,
        at once (the thread, which may be polling it, only forgets it: see _run)."""
        w = self._watched
        with _lock:
            w.wakers.pop(self._key, None)
            if not w.wakers and w.fd >= 0:
                os.close(w.fd)
                w.fd = -1
        os.eventfd_write(_WAKE_FD, 1)


def watch(pid: int, start_time: int, wake: Callable[[], None]) -> PeerWatch | None:
    """Call ``wake()`` (from the watch thread) once process ``pid`` exits.

    ``wake`` must be quick and must not take locks its watcher holds while it waits. A
    process already gone is dead at once (``wake`` is not called for it). Returns None
    where pidfds are not available; the caller keeps polling with :func:`is_alive`.
    """
    global _thread
    with _lock:
        w = _watched.get((pid, start_time))
        if w is None or (w.fd < 0 and not w.dead):  # (its last watcher closed its pidfd)
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                fd = -1
            except (OSError, AttributeError):  # no pidfd_open (kernel < 5.3, a sandbox)
                return None
            # Checked after opening: the pidfd pins the process the start time names.
            w = _Watched(fd, dead=fd < 0 or not is_alive(pid, start_time))
            _watched[(pid, start_time)] = w
        key = next(_keys)
        w.wakers[key] = wake
        if _thread is None or not _thread.is_alive():  # (not alive: in a forked child)
            _thread = threading.Thread(target=_run, name="raycg-peer-watch", daemon=True)
            _thread.start()
    os.eventfd_write(_WAKE_FD, 1)
    return PeerWatch(pid, w, key)


def _run() -> None:
    global _thread
    poll = select.poll()
    poll.register(_WAKE_FD, select.POLLIN)
    polled: dict[int, _Watched] = {}  # pidfd -> what it watches
    while True:
        with _lock:
            # Forget first what exited or was closed (PeerWatch.close closes the pidfd
            # itself, so that its number may already name another file: never poll or
            # close it again), then poll what is new.
            for fd, w in list(polled.items()):
                if w.fd != fd or w.dead:
                    poll.unregister(fd)
                    del polled[fd]
            for key, w in list(_watched.items()):
                if not w.wakers:
                    del _watched[key]  # its pidfd is closed already
                elif w.fd >= 0 and not w.dead and w.fd not in polled:
                    poll.register(w.fd, select.POLLIN)
                    polled[w.fd] = w
            if not _watched:
                _thread = None  # started again by the next watch()
                return
        for fd, _ in poll.poll():
            if fd == _WAKE_FD:
                try:
                    os.eventfd_read(_WAKE_FD)
                except BlockingIOError:
                    pass
                continue
            _exited(polled[fd], fd)


def _exited(w: _Watched, fd: int) -> None:
    """The process ``w`` watches exited: wake its watchers. (A function of its own: the
    thread's loop must keep no waker, and so no mapping, alive while it sleeps.)"""
    with _lock:
        if w.fd != fd:
            return  # closed while we polled: that event is not its process's
        w.dead = True  # before the wake: a waiter that misses the bump sees this
        wakers = list(w.wakers.values())
    for wake in wakers:
        wake()
