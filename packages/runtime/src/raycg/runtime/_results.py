"""What refs ask of the result buffer (``_result_buffer.py``): one result, several at
once, or room for one more execution.

Several refs at once (``ray.get([...])``, :meth:`Results.fetch_many`). Ray raises at
once when any of them failed, without waiting for the others. Within one execution the
rings of the refs asked for are read in the order their values come, not ring by ring,
so a failed branch is seen while a slow sibling still runs. Their values go through the
buffer, so they are copied.
"""

from __future__ import annotations

import threading
from typing import Any

from ray.exceptions import RayCgraphCapacityExceeded, RayTaskError

from raycg.transports import (
    ChannelError,
    ChannelTimeout,
    SlotPinned,
    deadline_after,
    remaining,
)

from ._result_buffer import MISSING, RAY_BUFFER_FULL, TAKEN, ResultBuffer

# Waiting for the first of several rings: a wait sleeps on one ring's futex, so each is
# waited on in turn, for slices growing from _POLL_MIN_S to _POLL_MAX_S (a failure on
# one ring is seen within a few slices; each slice costs a 50 us spin at most).
_POLL_MIN_S = 0.001
_POLL_MAX_S = 0.016


class Results(ResultBuffer):
    """The caller's result buffer, as refs and ``execute`` use it."""

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
                    RAY_BUFFER_FULL.format(max=self._max_buffered, n=len(self._rows))
                    + f" {self._name}: every execution in flight is finished, and the driver holds "
                    "the results of the others; get some results before executing more"
                )
            self._read_one(deadline, "execute")
        finally:
            self._end_turn()

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
                    if row is None or row[out] is TAKEN:
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

    def _read_until_failure(self, deadline: float, rings: set[int]) -> bool:
        """Read execution ``next_read``'s rings (copied) in the order their values
        come, while two or more of ``rings`` are unread. False: one of ``rings`` holds a
        failure (others may be unread); True: at most one of ``rings`` is left unread."""
        partial, slice_s = self._partial, 0.0  # the first pass takes what is there
        if any(isinstance(partial[c], RayTaskError) for c in rings):
            return False  # seen by an earlier get of another output of the same ring
        try:
            while sum(partial[c] is MISSING for c in rings) > 1:
                for c in [c for c, v in enumerate(partial) if v is MISSING]:
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
                    self._rows.setdefault(idx, [TAKEN] * len(self._out_map))[out] = value
            self._cond.notify_all()
