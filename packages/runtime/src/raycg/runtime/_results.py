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

Several refs at once (``ray.get([...])``, :meth:`Results.fetch_many`). Ray raises at
once when any of them failed, without waiting for the others. Within one execution the
rings of the refs asked for are read in the order their values come, not ring by ring,
so a failed branch is seen while a slow sibling still runs. Their values go through the
buffer, so they are copied.
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
    SlotPinned,
    deadline_after,
    remaining,
)

from ._errors import wrap_task_error
from ._projection import Step, project

_TAKEN = object()  # a result already returned (or dropped)
_MISSING = object()  # a ring not read yet for the execution being read

# Waiting for the first of several rings: a wait sleeps on one ring's futex, so each is
# waited on in turn, for slices growing from _POLL_MIN_S to _POLL_MAX_S (a failure on
# one ring is seen within a few slices; each slice costs a 50 us spin at most).
_POLL_MIN_S = 0.001
_POLL_MAX_S = 0.016

# Ray's wording (its tests match it), followed by ours.
_RAY_BUFFER_FULL = (
    "The compiled graph can't have more than {max} buffered results, and you currently have "
    "{n} buffered results. Call `ray.get()` on CompiledDAGRef's (or await on CompiledDAGFuture's) "
    "to retrieve results, or increase `_max_buffered_results` if buffering is desired, note that "
    "this will increase driver memory usage."
)

Fault = Callable[[ChannelError, str], Exception]


class Results:
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
        self._partial: list[Any] = [_MISSING] * len(readers)  # its ring values read so far
        self._rows: dict[int, list[Any]] = {}
        self._dropped: dict[int, set[int]] = {}
        self.results_read = 0

    # -- what refs call ---------------------------------------------------------------

    def fetch(self, idx: int, out: int, deadline: float) -> Any:
        """The result ``out`` of execution ``idx``, reading the rings as needed."""
        while True:
            found, value = self._wait_turn(deadline, idx, out)
            if found:
                return value
            try:
                self._check_capacity(idx)
                if idx == self.next_read:  # ours is next: read it, zero-copy, and take it
                    return self._read_one(deadline, "get", zero_copy=self._sole_channel[out], take=out)
                self._read_one(deadline, "get")
            finally:
                self._end_turn()

    def fetch_many(self, wanted: list[tuple[int, int]], deadline: float) -> dict[int, Any]:
        """The results ``wanted`` ((execution, output) pairs), by their place in the list.

        As soon as one of them is a failure (a ``RayTaskError``), returns that one alone
        (the first in the list, of those met), so that ``ray.get`` of a list raises at
        once. Whatever else it took is put back, as on any exception: those refs can
        still be fetched.
        """
        taken: dict[int, Any] = {}
        try:
            while True:
                turn = self._wait_turn_many(deadline, wanted, taken)
                try:
                    failed = [p for p, v in taken.items() if isinstance(v, RayTaskError)]
                    if turn and not failed and len(taken) < len(wanted):
                        idx = min(i for p, (i, _) in enumerate(wanted) if p not in taken)
                        if not self._read_for(deadline, idx, wanted, taken):
                            failed = [p for p, v in taken.items() if isinstance(v, RayTaskError)]
                finally:
                    if turn:
                        self._end_turn()
                if failed:
                    first = min(failed)
                    self._put_back(wanted, taken, keep=first)
                    return {first: taken[first]}
                if len(taken) == len(wanted):
                    return taken
        except BaseException:
            self._put_back(wanted, taken, keep=None)
            raise

    def _read_for(
        self, deadline: float, idx: int, wanted: list[tuple[int, int]], taken: dict[int, Any]
    ) -> bool:
        """Holding the turn: read one execution towards ``idx`` into the buffer. False:
        execution ``idx``'s rings showed a failure of ``wanted`` first (now in ``taken``)."""
        self._check_capacity(idx)
        if idx > self.next_read:
            self._read_one(deadline, "get")
            return True
        rings = {self._out_map[o][0] for p, (i, o) in enumerate(wanted) if i == idx and p not in taken}
        if self._read_until_failure(deadline, rings):
            self._read_one(deadline, "get")  # buffered (copied): the next turn takes them
            return True
        self._take_failures(idx, wanted, taken)
        return False

    def drain_one(self, deadline: float, submitted: int, max_inflight: int) -> None:
        """Make room for one more execution (for ``execute``): read the oldest in flight
        into the buffer, unless another thread's get did so while we waited our turn."""
        self._wait_turn(deadline)
        try:
            if submitted - self.next_read < max_inflight:
                return  # room was made meanwhile: reading now would wait for a value never sent
            if len(self._rows) >= self._max_buffered:
                raise RayCgraphCapacityExceeded(
                    _RAY_BUFFER_FULL.format(max=self._max_buffered, n=len(self._rows))
                    + f" {self._name}: every execution in flight is finished, and the driver holds "
                    "the results of the others; get some results before executing more"
                )
            self._read_one(deadline, "execute")
        finally:
            self._end_turn()

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

    # -- reading ----------------------------------------------------------------------

    def _wait_turn(self, deadline: float, idx: int | None = None, out: int = 0) -> tuple[bool, Any]:
        """Until the result ``(idx, out)`` is buffered -> (True, it); or until nobody
        reads the rings -> (False, None), and this thread's turn to read has begun."""
        with self._cond:
            while True:
                if idx is not None:
                    row = self._rows.get(idx)
                    if row is not None and row[out] is not _TAKEN:
                        value = row[out]
                        self._take(idx, out)
                        return True, value
                    if idx < self.next_read:
                        raise ValueError(f"the result of execution {idx} (output {out}) was already released")
                if self._reader is None or self._closed:
                    self._reader = threading.get_ident()
                    return False, None
                self._wait_for_others(deadline, f"execution {idx}" if idx is not None else None)

    def _wait_turn_many(self, deadline: float, wanted: list[tuple[int, int]], taken: dict[int, Any]) -> bool:
        """Take into ``taken`` every result of ``wanted`` that is buffered: False if any
        was; else wait until one is (False), or this thread's turn to read begins (True)."""
        with self._cond:
            while True:
                got = False
                for p, (idx, out) in enumerate(wanted):
                    row = self._rows.get(idx)
                    if p in taken or idx >= self.next_read:
                        continue
                    if row is None or row[out] is _TAKEN:
                        raise ValueError(f"the result of execution {idx} (output {out}) was already released")
                    taken[p] = row[out]
                    self._take(idx, out)
                    got = True
                if got:
                    return False
                if self._reader is None or self._closed:
                    self._reader = threading.get_ident()
                    return True
                self._wait_for_others(deadline, f"execution {min(i for i, _ in wanted)}")

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
                _RAY_BUFFER_FULL.format(max=self._max_buffered, n=len(self._rows))
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
            partial[:] = [_MISSING] * len(partial)
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
            if partial[c] is _MISSING:
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

    def _read_until_failure(self, deadline: float, rings: set[int]) -> bool:
        """Read execution ``next_read``'s rings (copied) in the order their values
        come, while two or more of ``rings`` are unread. False: one of ``rings`` holds a
        failure (others may be unread); True: at most one of ``rings`` is left unread."""
        partial, slice_s = self._partial, 0.0  # the first pass takes what is there
        if any(isinstance(partial[c], RayTaskError) for c in rings):
            return False  # seen by an earlier get of another output of the same ring
        try:
            while sum(partial[c] is _MISSING for c in rings) > 1:
                for c in [c for c, v in enumerate(partial) if v is _MISSING]:
                    refused = self._pinned_by_us(self._readers[c], c)
                    if refused is not None:
                        raise refused
                    try:
                        partial[c] = self._read_value(
                            self._readers[c], min(deadline, deadline_after(slice_s)), False
                        )
                    except ChannelTimeout as e:
                        if isinstance(e, SlotPinned) or remaining(deadline) <= 0:
                            raise
                        continue
                    if c in rings and isinstance(partial[c], RayTaskError):
                        return False
                slice_s = min(max(2 * slice_s, _POLL_MIN_S), _POLL_MAX_S)
        except ChannelError as e:
            raise self._fault(e, "get") from e
        return True

    def _take_failures(self, idx: int, wanted: list[tuple[int, int]], taken: dict[int, Any]) -> None:
        """Take the failures among ``wanted`` of execution ``idx`` (``next_read``, not
        complete): its row, once read, is stored with them already taken."""
        with self._lock:
            for p, (i, out) in enumerate(wanted):
                value = self._partial[self._out_map[out][0]]
                if i == idx and p not in taken and isinstance(value, RayTaskError):
                    taken[p] = value
                    self._dropped.setdefault(idx, set()).add(out)

    def _put_back(self, wanted: list[tuple[int, int]], taken: dict[int, Any], keep: int | None) -> None:
        """Undo the taking of every result in ``taken`` but ``keep``."""
        with self._cond:
            for p, value in taken.items():
                idx, out = wanted[p]
                if p == keep:
                    continue
                if idx >= self.next_read:  # a failure taken from the execution being read
                    self._dropped.get(idx, set()).discard(out)
                else:
                    self._rows.setdefault(idx, [_TAKEN] * len(self._out_map))[out] = value
            self._cond.notify_all()

    def _take(self, idx: int, out: int) -> None:
        row = self._rows[idx]
        row[out] = _TAKEN
        if all(v is _TAKEN for v in row):
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
