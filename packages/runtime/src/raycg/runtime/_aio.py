"""Keeping the event loop free: what ``execute_async`` and ``await fut`` run on the
loop's own thread, and what they hand to other threads.

On the loop, a coroutine only tries the non-blocking fast path (a zero-timeout write or
read). Whatever may block goes to a thread: waiting for room or for a result (the
graph's pool), and handling a fault. A fault's handling makes blocking Ray calls (the
teardown asks every surviving actor to stop its executor, up to ~15 s; with actors on
other nodes, Ray is asked which one died), so the fast path, on meeting one, raises
:class:`Deferred` in its place, and the coroutine awaits the handling on a thread of
its own (:func:`off_loop`), never on the pool, whose threads may all be blocked in
reads that only that teardown ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from raycg.transports import ChannelError

T = TypeVar("T")


class _LoopThread(threading.local):
    fast_path = False  # this thread runs a coroutine's fast path (no blocking allowed)


_here = _LoopThread()


class Deferred(Exception):
    """Raised on the fast path in place of a fault's handling, which would block.

    Not a ``RayChannelError``: it must pass every handler of the caller's path
    untouched (locks and turns are released on the way out, by their ``finally``s).
    """

    def __init__(self, error: ChannelError, what: str):
        super().__init__(f"{what}: {error}")
        self.error, self.what = error, what


def on_fast_path() -> bool:
    """Whether this thread runs a coroutine's fast path (see :func:`fast`)."""
    return _here.fast_path


def fast(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the loop's thread, where a fault raises
    :class:`Deferred` instead of being handled."""
    before, _here.fast_path = _here.fast_path, True
    try:
        return fn(*args, **kwargs)
    finally:
        _here.fast_path = before


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Await ``fn(*args)``, run on a thread of its own (its result or its exception).

    For the rare blocking work of a fault (a thread each: a fault ends the graph, so
    there are a handful at most, and each ends with its teardown).
    """
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # handed to the awaiting coroutine
            done.set_exception(e)

    threading.Thread(target=run, name="raycg-fault").start()
    # wrap_future settles the loop's future from the thread through call_soon_threadsafe
    # (and does nothing if the loop has closed meanwhile).
    return await asyncio.wrap_future(done)
