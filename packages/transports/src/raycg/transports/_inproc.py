"""The in-process channel: edges between tasks of one actor.

Same semantics as the shared-memory ring (one writer, N readers, each reader gets every
value in order, ``nslots`` values in flight, close wakes everyone), but the slots hold
the Python objects themselves: nothing is serialized or copied, as between two calls in
one process nothing needs to be.
"""

from __future__ import annotations

import threading

from ._channel import Channel, wrong_end
from ._deadline import deadline_after, remaining
from ._errors import ChannelClosed, ChannelTimeout


class InprocRing:
    """A ring of ``nslots`` Python objects shared by threads of one process."""

    def __init__(self, nslots: int, nreaders: int, name: str = "inproc"):
        if nslots < 1 or nreaders < 1:
            raise ValueError(f"a ring needs nslots >= 1 and nreaders >= 1, got {nslots}, {nreaders}")
        self.name = name
        self.nslots = nslots
        self._slots: list[object] = [None] * nslots
        self._write_seq = 0
        self._read_seq = [0] * nreaders
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def writer(self) -> InprocWriter:
        return InprocWriter(self)

    def reader(self, index: int) -> InprocReader:
        if not 0 <= index < len(self._read_seq):
            raise ValueError(f"reader index {index} out of range for {len(self._read_seq)} readers")
        return InprocReader(self, index)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._slots = [None] * self.nslots
            self._cond.notify_all()

    def _wait(self, ready: object, deadline: float, what: str) -> None:
        """Wait (holding the condition's lock) until ``ready()``; raise on close/timeout."""
        while True:
            if self._closed:
                raise ChannelClosed(f"channel {self.name!r} is closed")
            if ready():  # type: ignore[operator]
                return
            left = remaining(deadline)
            if left <= 0:
                raise ChannelTimeout(f"channel {self.name!r}: timed out waiting for {what}")
            self._cond.wait(None if left == float("inf") else left)

    def _write(self, value: object, timeout_s: float | None) -> None:
        with self._cond:
            seq = self._write_seq
            self._wait(
                lambda: min(self._read_seq) > seq - self.nslots, deadline_after(timeout_s), "a free slot"
            )
            self._slots[seq % self.nslots] = value
            self._write_seq = seq + 1
            self._cond.notify_all()

    def _read(self, index: int, timeout_s: float | None) -> object:
        with self._cond:
            seq = self._read_seq[index]
            self._wait(lambda: self._write_seq > seq, deadline_after(timeout_s), f"value #{seq}")
            value = self._slots[seq % self.nslots]
            self._read_seq[index] = seq + 1
            if min(self._read_seq) > seq:
                self._slots[seq % self.nslots] = None  # every reader has it: drop our reference
            self._cond.notify_all()
            return value


class InprocWriter(Channel):
    def __init__(self, ring: InprocRing):
        self._ring = ring

    def __repr__(self) -> str:
        return f"InprocWriter({self._ring.name!r})"

    def write(self, value: object, timeout_s: float | None = None) -> None:
        self._ring._write(value, timeout_s)

    def read(self, timeout_s: float | None = None) -> object:
        raise wrong_end(self, "read")

    def close(self) -> None:
        self._ring.close()


class InprocReader(Channel):
    def __init__(self, ring: InprocRing, index: int):
        self._ring = ring
        self.index = index

    def __repr__(self) -> str:
        return f"InprocReader({self._ring.name!r}, index={self.index})"

    def write(self, value: object, timeout_s: float | None = None) -> None:
        raise wrong_end(self, "write")

    def read(self, timeout_s: float | None = None) -> object:
        return self._ring._read(self.index, timeout_s)

    def close(self) -> None:
        self._ring.close()
