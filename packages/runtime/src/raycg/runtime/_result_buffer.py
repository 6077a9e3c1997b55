"""The caller's result buffer: reads the output rings in execution order, hands each
result to the ref it belongs to, from any thread.

Threads. One thread at a time reads the rings: it takes a turn, reads one execution
without holding the buffer's lock (so other threads can take results already
buffered), stores it, and wakes every waiting thread. A thread whose result is not
buffered waits (up to its deadline) for its result to appear or for the turn, and then
reads the next execution itself. So every result reaches its own ref whatever thread
asks, nobody waits longer than its own timeout, and nobody waits for a result that is
already buffered (waiting on a lock instead would let unfair hand-offs starve it).

Pinning. A result read for the get that asked for it is handed over zero-copy. Results
read on the way (earlier or later executions nobody asked for yet, and the other
outputs of the execution asked for) are copied into the buffer, so the buffer itself
never pins a ring slot. An output ring that carries several outputs of one task
(``num_returns``) is copied too when one of them is asked for: its siblings are kept.

Capacity. As in Ray (``CompiledDAG._execute_until``), a get reads no execution while
``max_buffered_results`` results are held: it raises ``RayCgraphCapacityExceeded``.

What the refs call (a get, several at once, making room for ``execute``) is in
``_results.py``; this module holds the buffer and the reading of one execution.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayCgraphCapacityExceeded, RayTaskError

from raycg.transports import (
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    ShmRingReader,
    remaining,
)

from ._errors import wrap_task_error
from ._projection import Step, project

TAKEN = object()  # a result already returned (or dropped)
MISSING = object()  # a ring not read yet for the execution being read

# Ray's wording (its tests match it), followed by ours.
RAY_BUFFER_FULL = (
    "The compiled graph can't have more than {max} buffered results, and you currently have "
    "{n} buffered results. Call `ray.get()` on CompiledDAGRef's (or await on CompiledDAGFuture's) "
    "to retrieve results, or increase `_max_buffered_results` if buffering is desired, note that "
    "this will increase driver memory usage."
)

Fault = Callable[[ChannelError, str], Exception]


class ResultBuffer:
    """Results read from the output rings and not yet taken, and the turn to read them."""

    def __init__(
        self,
        name: str,
        readers: list[ShmRingReader],
        out_map: list[tuple[int, tuple[Step, ...]]],
        max_buffered: int,
        fault: Fault,
    ):
        self._name = name
        self._readers = readers
        self._out_map = out_map  # output index -> (reader index, projections)
        # output index -> its reader, if no other output reads that ring (else None)
        rings = [c for c, _ in out_map]
        self._sole_channel = [c if rings.count(c) == 1 else None for c in rings]
        self._max_buffered = max_buffered
        self._fault = fault
        self._closed = False
        # One thread at a time reads the rings (``_reader``, its ident); the others wait
        # on the condition, which is notified after every execution read.
        # Re-entrant: a ref dropped by the garbage collector (GraphRef.__del__) may
        # call release() while this thread already holds the lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._reader: int | None = None
        self.next_read = 0  # the next execution to read from the rings
        self._partial: list[Any] = [MISSING] * len(readers)  # its ring values read so far
        self._rows: dict[int, list[Any]] = {}
        self._dropped: dict[int, set[int]] = {}
        self.results_read = 0

    def release(self, idx: int, out: int) -> None:
        """A ref was dropped without a get: forget its result, now or when it comes."""
        with self._lock:
            if idx in self._rows:
                self._take(idx, out)
            elif idx >= self.next_read:
                self._dropped.setdefault(idx, set()).add(out)

    def clear(self, timeout_s: float = 5.0) -> None:
        """Forget every result and drop the readers (at teardown; the rings are closed
        already, so a thread reading them is about to give its turn back)."""
        with self._cond:
            self._closed = True
            me = threading.get_ident()
            self._cond.wait_for(lambda: self._reader in (None, me), timeout_s)
            self._rows.clear()
            self._dropped.clear()
            self._partial = []
            self._readers = []
            self._cond.notify_all()

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def _wait_turn(self, deadline: float, idx: int | None = None, out: int = 0) -> tuple[bool, Any]:
        """Until the result ``(idx, out)`` is buffered -> (True, it); or until nobody
        reads the rings -> (False, None), and this thread's turn to read has begun."""
        with self._cond:
            while True:
                if idx is not None:
                    row = self._rows.get(idx)
                    if row is not None and row[out] is not TAKEN:
                        value = row[out]
                        self._take(idx, out)
                        return True, value
                    if idx < self.next_read:
                        raise ValueError(f"the result of execution {idx} (output {out}) was already released")
                if self._reader is None or self._closed:
                    self._reader = threading.get_ident()
                    return False, None
                self._wait_for_others(deadline, f"execution {idx}" if idx is not None else None)

    def _wait_for_others(self, deadline: float, what: str | None) -> None:
        """One wait on the condition (holding it), while another thread reads the rings."""
        left = remaining(deadline)
        if left <= 0:
            waited = what or "a result to drain"
            raise self._fault(
                ChannelTimeout(f"timed out waiting for {waited} (another thread was reading the results)"),
                "get" if what else "execute",
            )
        self._cond.wait(None if math.isinf(left) else left)

    def _check_capacity(self, idx: int) -> None:
        if len(self._rows) >= self._max_buffered:
            raise RayCgraphCapacityExceeded(
                RAY_BUFFER_FULL.format(max=self._max_buffered, n=len(self._rows))
                + f" {self._name}: execution {idx} is not read yet, and reading it would hold one "
                "more result on the driver"
            )

    def _end_turn(self) -> None:
        with self._cond:
            if self._reader == threading.get_ident():
                self._reader = None
            self._cond.notify_all()  # waiters re-check the buffer, and one may read next

    def _read_one(
        self, deadline: float, what: str, zero_copy: int | None = None, take: int | None = None
    ) -> Any:
        """Read every output ring once for execution ``next_read`` (holding the token);
        with ``take``, return that output of it (as taken) instead of buffering it.
        Ring ``zero_copy`` alone is read without a copy (the one ``take`` reads alone)."""
        if self._closed:
            raise self._fault(ChannelClosed(f"{self._name} is torn down"), what)
        try:
            refused = self._read_rings(deadline, zero_copy)
        except ChannelError as e:
            raise self._fault(e, what) from e
        if refused is not None:
            raise refused
        partial = self._partial
        try:
            row = [self._output(out, partial[c], proj) for out, (c, proj) in enumerate(self._out_map)]
        finally:
            # Empty the list in place: a traceback of an earlier failed read may still
            # reference it, and must not keep (and pin) this execution's values.
            partial[:] = [MISSING] * len(partial)
        with self._lock:
            idx = self.next_read
            self._rows[idx] = row
            self.next_read = idx + 1
            self.results_read += 1
            for out in self._dropped.pop(idx, ()):
                self._take(idx, out)
            if take is None:
                return None
            value = row[take]
            self._take(idx, take)
            return value

    def _read_rings(self, deadline: float, zero_copy: int | None) -> Exception | None:
        """Read each ring's value of the next execution into ``_partial`` (those not read
        by an earlier try that timed out). Returns the refusal to raise, if a value we
        hold blocks a ring, rather than raising it here: an exception raised in this
        frame would hold ``reader`` in its traceback, and so, for as long as the caller
        keeps the exception, the ring's mappings, even after teardown."""
        partial = self._partial
        for c, reader in enumerate(self._readers):
            if partial[c] is MISSING:
                refused = self._pinned_by_us(reader, c)
                if refused is not None:
                    return refused
                partial[c] = self._read_value(reader, deadline, c != zero_copy)
        return None

    def _read_value(self, reader: ShmRingReader, deadline: float, copy: bool) -> Any:
        """The next value of one output ring. One that fails to unpickle here (its slot
        is consumed all the same, so the rings stay in step) is that output's failure."""
        try:
            return reader.read(remaining(deadline), copy=copy)
        except ChannelError:
            raise
        except Exception as e:
            err = TypeError(f"a result could not be deserialized by the caller: {type(e).__name__}: {e}")
            err.__cause__ = e
            return wrap_task_error(err, f"{reader.spec.name}", self._name)

    def _output(self, out: int, value: Any, steps: tuple[Step, ...]) -> Any:
        """Output ``out`` of a channel value. The executor checks that a task returns
        its ``num_returns`` values; should a projection fail all the same, that output
        of this execution fails, and the buffer goes on to the next execution."""
        if isinstance(value, RayTaskError) or not steps:
            return value
        try:
            return project(value, steps, False)
        except (IndexError, KeyError, TypeError) as e:
            return wrap_task_error(e, f"output {out} of {self._name}", self._name)

    def _take(self, idx: int, out: int) -> None:
        row = self._rows[idx]
        row[out] = TAKEN
        if all(v is TAKEN for v in row):
            del self._rows[idx]

    def _pinned_by_us(self, reader: ShmRingReader, channel_index: int) -> Exception | None:
        """The refusal to wait for a value the writer cannot write because a zero-copy
        value this process holds pins the slot it needs (waiting would only time out)."""
        blocking_seq = reader.next_seq - reader.spec.nslots
        if blocking_seq < 0 or not reader.holds_pins:
            return None
        for seq, desc in reader.pinned():
            if seq == blocking_seq:
                out = next(i for i, (c, _) in enumerate(self._out_map) if c == channel_index)
                return RayCgraphCapacityExceeded(
                    f"{self._name}: execution {reader.next_seq} cannot complete: its output slot is "
                    f"pinned by {desc}, a zero-copy result this process still holds from the ref of "
                    f"execution {seq} (output {out}). Drop that value, or copy it (np.array(value)), "
                    "and execute again"
                )
        return None
