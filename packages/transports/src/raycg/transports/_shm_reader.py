"""A read end of the shared-memory ring (layout and protocol: _shm_ring.py).

Values whose out-of-band buffers are large are read zero-copy: they point into the
slot, which stays pinned (released_seq does not pass it) until they are garbage.

A value without out-of-band buffers is read by the C core in one call
(_native.ReaderCore.try_read: spin, unpickle, release); anything else (waiting past
the spin, a new generation, buffers, pins, errors) takes the Python path here, which
gives a value that came while it slept back to the C core. The core holds ``next``,
the seq to read.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import struct
import threading
import weakref

from . import _liveness, _native, _serde, _tensor_cow
from ._channel import wrong_end
from ._deadline import deadline_after
from ._errors import ChannelBroken, ChannelClosed, ChannelTimeout
from ._segment import Segment
from ._shm_ring import (
    _CLOSED,
    _DATA_FUTEX,
    _DESC_BYTES,
    _LINE,
    _PURE_SPIN_NS,
    _R_PID,
    _R_PINNED,
    _R_RELEASED,
    _R_START,
    _R_WAITING,
    _READERS,
    _SLOT_RECORD,
    _WRITE_SEQ,
    _WRITER_PID,
    _WRITER_START,
    DEFAULT_LIVENESS_INTERVAL_S,
    DEFAULT_SPIN_S,
    DEFAULT_ZERO_COPY_MIN_BYTES,
    NONE,
    ShmRingSpec,
    _descs_offset,
    _Endpoint,
    _slots_offset,
)


def _on_unpin(reader_ref: weakref.ref[ShmRingReader], unpinned: collections.deque[int], seq: int) -> None:
    """Finalizer of a zero-copy value's slot view: free the slot at once, so that a
    writer waiting for it proceeds even while the reader is idle or blocked."""
    unpinned.append(seq)
    reader = reader_ref()
    if reader is not None:
        reader._drain_unpinned()


def _no_spin() -> None:
    """The core already spun for this value."""


class ShmRingReader(_Endpoint):
    """Read end ``index`` of a ring.

    Values whose out-of-band buffers total at least ``zero_copy_min_bytes`` are read
    without a copy: their arrays point into the slot, which stays *pinned* (not
    reusable by the writer) until every such array is garbage-collected.
    """

    def __init__(
        self,
        spec: ShmRingSpec,
        index: int,
        *,
        spin_s: float = DEFAULT_SPIN_S,
        liveness_interval_s: float = DEFAULT_LIVENESS_INTERVAL_S,
        zero_copy_min_bytes: int = DEFAULT_ZERO_COPY_MIN_BYTES,
    ):
        if not 0 <= index < spec.nreaders:
            raise ValueError(f"reader index {index} out of range for {spec.nreaders} readers")
        super().__init__(spec, spin_s, liveness_interval_s)
        self.index = index
        self._zero_copy_min = zero_copy_min_bytes
        line = _READERS + _LINE * index
        self._released_off = (line + _R_RELEASED) // 8
        self._waiting_off = (line + _R_WAITING) // 4
        self._pinned_off = (line + _R_PINNED) // 8
        self._desc_off = _descs_offset(spec.nreaders, spec.nslots) + _DESC_BYTES * index
        q, i = self._ctrl.q, self._ctrl.i
        i[(line + _R_PID) // 4] = os.getpid()
        q[(line + _R_START) // 8] = _liveness.process_start_time(os.getpid()) or 0
        self._slots_off = _slots_offset(spec.nreaders)
        self._gens: dict[int, Segment] = {}
        # Zero-copy values still alive: seq -> description. Finalizers (which may run in
        # any thread, at any allocation) only append to _unpinned; _drain_unpinned
        # applies them under a re-entrant lock (see _drain_unpinned).
        self._pinned: dict[int, str] = {}
        self._unpinned: collections.deque[int] = collections.deque()
        self._pin_lock = threading.Lock()
        self._published_pin = (NONE, "")
        # Finalizers reach the reader through a weak reference: a value the user keeps
        # must not keep the endpoint (and its mappings) alive.
        self._self_ref = weakref.ref(self)
        self._unpin = functools.partial(_on_unpin, self._self_ref, self._unpinned)
        self._core = _native.ReaderCore(
            self._ctrl.seg.mm,
            self._ctrl.addr,
            spec.nslots,
            spec.nreaders,
            index,
            q[self._released_off],
            self._pinned,
            self._unpinned,
            self._spin_ns,
            _PURE_SPIN_NS,
        )
        self._attached()

    def __repr__(self) -> str:
        return f"ShmRingReader({self.spec.name!r}, index={self.index})"

    def write(self, value: object, timeout_s: float | None = None) -> None:
        raise wrong_end(self, "write")

    def pinned(self) -> list[tuple[int, str]]:
        """The values this reader still holds zero-copy: (seq, description), oldest first."""
        self._drain_unpinned()
        with self._pin_lock:
            held = sorted(self._pinned.items())
        self._drain_unpinned()  # what finalizers queued while we held the lock
        return held

    @property
    def holds_pins(self) -> bool:
        """Whether zero-copy values read from this ring may still be alive (cheap: no
        drain; call pinned() for the details)."""
        return bool(self._pinned) or bool(self._unpinned)

    @property
    def next_seq(self) -> int:
        """The sequence number the next read returns."""
        return self._core.next

    def read(self, timeout_s: float | None = None, *, copy: bool = False) -> object:
        """The next value. ``copy=True`` copies its buffers out of the slot instead of
        pinning it (for values that will be kept a while, e.g. in a result buffer)."""
        value = self._core.try_read()
        if value is _native.MISS:
            return self._read(timeout_s, copy)
        return value

    def _read(self, timeout_s: float | None, copy: bool) -> object:
        """The Python path: waiting past the spin, new generations, buffers, pins."""
        ctrl = self._ctrl  # one mapping throughout (see _Ctrl)
        q, i = ctrl.q, ctrl.i
        if self._unpinned:
            self._drain_unpinned()  # publish dropped values before we may sleep
        core = self._core
        seq = core.next
        if q[_WRITE_SEQ // 8] <= seq or i[_CLOSED // 4]:
            self._wait_data(seq, deadline_after(timeout_s), spun=core.spun)
            # Woken with the value there: the C path decodes a plain one sooner than
            # the lines below (~5 µs of a ~60 µs hand-off on this VM: python -m
            # benchmarks grpc-hops, 4 runs each way); it leaves any other value to them,
            # still unread.
            value = core.try_read()
            if value is not _native.MISS:
                return value
        rec = _SLOT_RECORD.unpack_from(
            ctrl.seg.view,  # type: ignore[arg-type]
            self._slots_off + _LINE * (seq % self.spec.nslots),
        )
        r_seq, gen, pid, fd, slot_bytes, base, meta_len, nbufs = rec
        if r_seq != seq:
            raise ChannelBroken(f"channel {self.spec.name!r}: slot holds value #{r_seq}, expected #{seq}")
        if slot_bytes == 0:
            raise self._corrupt(seq, "its region has 0 bytes")
        seg = self._gens.get(gen)
        if seg is None:
            seg = self._map_generation(gen, pid, fd, slot_bytes)
        # Never read through a record that points outside the mapping (a segfault).
        if base + slot_bytes > seg.size_bytes or 16 * nbufs + meta_len > slot_bytes:
            raise self._corrupt(
                seq,
                f"a {slot_bytes}-byte region at {base} of a {seg.size_bytes}-byte segment, "
                f"holding {nbufs} buffers and a {meta_len}-byte stream",
            )
        # Our own references: a close() on another thread (whenever decoding lets the
        # GIL go) drops the segment's, and the mapping must outlive every view we make.
        # A slice of ``view`` holds the exporter ``mm`` too, and so does a Pin.
        mm, view = seg.mm, seg.view
        if mm is None or view is None:
            raise ChannelClosed(f"channel {self.spec.name!r} is closed")
        core.next = seq + 1
        if not nbufs:
            try:
                return pickle.loads(view[base : base + meta_len])
            finally:  # a value that fails to unpickle is consumed all the same
                self._release_through(seq + 1)
        return self._read_with_buffers(
            seq, (mm, seg.address, view), base, slot_bytes, meta_len, nbufs, copy, seg
        )

    def _corrupt(self, seq: int, why: str) -> ChannelBroken:
        return ChannelBroken(f"channel {self.spec.name!r}: the slot record of value #{seq} is corrupt: {why}")

    def _read_with_buffers(
        self,
        seq: int,
        mapping: tuple[object, int, memoryview],
        base: int,
        region_bytes: int,
        meta_len: int,
        nbufs: int,
        copy: bool,
        seg: Segment,
    ) -> object:
        """Decode value ``seq``, whose region of ``region_bytes`` starts at ``base`` in
        ``mapping``: the mapping's exporter (held for as long as we make views of it),
        address and view, of the generation ``seg``.

        Raises:
            ChannelBroken: the buffer table points outside the region.
        """
        mm, address, view = mapping
        table = struct.unpack_from(f"<{2 * nbufs}Q", view, base)
        for o, n in zip(table[0::2], table[1::2]):
            if o + n > region_bytes:
                raise self._corrupt(seq, f"a {n}-byte buffer at {o} of a {region_bytes}-byte region")
        meta = view[base + 16 * nbufs : base + 16 * nbufs + meta_len]
        tensors = _serde.holds_tensors(meta)
        private = self.spec.nreaders > 1  # tensors of a fan-out: copy-on-write
        if tensors and private and not copy and not _tensor_cow.supported(base, region_bytes):
            copy = True  # no copy-on-write view of this region: a copy keeps readers apart
        if copy or sum(table[1::2]) < self._zero_copy_min:
            bufs = [bytearray(view[base + o : base + o + n]) for o, n in zip(table[0::2], table[1::2])]
            try:
                return _serde.decode(meta, bufs)
            finally:
                self._release_through(seq + 1)
        # Zero copy: one read-only view of the slot, exported by a Pin (C) that keeps
        # the mapping alive and unpins the slot when the last view of it dies. Tensors
        # (torch cannot make them read-only) get a writable view instead: copy-on-write
        # where other readers share the slot (_tensor_cow); with no other reader, a
        # writable Pin, at exactly an array's cost (see _tensor_cow for why it is safe).
        with self._pin_lock:
            self._pinned[seq] = "a zero-copy value being decoded"
        nbytes = table[-2] + table[-1]
        if tensors and private:
            pin = None
            unpin = functools.partial(self._unpin, seq)
            pv = _tensor_cow.open_view(seg, base, nbytes, unpin)
        else:
            pin = _native.Pin(mm, address + base, nbytes, seq, self._unpin, tensors)
            pv = memoryview(pin)
        bufs2 = [pv[o : o + n] for o, n in zip(table[0::2], table[1::2])]
        try:
            value = _serde.decode(meta, bufs2)
        finally:
            del pin, pv, bufs2  # if nothing kept a buffer, the finalizer unpins it now
        with self._pin_lock:
            if seq in self._pinned:
                self._pinned[seq] = _serde.describe(value)
        self._drain_unpinned()
        return value

    def _release_through(self, released: int) -> None:
        """Publish that every seq below ``released`` is free, and wake a sleeping writer."""
        if self._pinned or self._unpinned:
            self._drain_unpinned()
            return
        self._publish_released(released)

    def _publish_released(self, released: int) -> None:
        """Store released_seq; wake the writer if it sleeps (the core does both)."""
        self._core.release(released)

    def _drain_unpinned(self) -> None:
        """Apply dropped pins; publish the new released_seq, pinned_seq and description.

        Finalizers call this from whatever thread drops a value, at any allocation,
        possibly while this thread is already inside it. So it never blocks: whoever
        holds the lock applies the queue, and checks it again after letting go.
        """
        while self._pin_lock.acquire(blocking=False):
            try:
                self._apply_unpinned()
            finally:
                self._pin_lock.release()
            if not self._unpinned:
                return

    def _apply_unpinned(self) -> None:
        ctrl = self._ctrl  # one mapping throughout (see _Ctrl)
        if ctrl.seg.view is None:
            return
        while self._unpinned:
            self._pinned.pop(self._unpinned.popleft(), None)
        oldest = min(self._pinned) if self._pinned else NONE
        pin = (oldest, self._pinned.get(oldest, ""))
        if pin != self._published_pin:
            # The description first: the writer reads pinned_seq, then the description.
            desc = pin[1].encode()[: _DESC_BYTES - 1] + b"\0"
            ctrl.seg.view[self._desc_off : self._desc_off + len(desc)] = desc
            ctrl.q[self._pinned_off] = oldest
            self._published_pin = pin
        released = min(oldest, self._core.next)
        if released > self._ctrl.q[self._released_off]:  # released_seq only moves forward
            self._publish_released(released)

    def _map_generation(self, gen: int, pid: int, fd: int, slot_bytes: int) -> Segment:
        seg = Segment.open(pid, fd, self.spec.nslots * slot_bytes)
        if self._closed_locally:  # closed by another thread meanwhile: keep nothing mapped
            seg.close()
            raise ChannelClosed(f"channel {self.spec.name!r} is closed")
        # Values are written in seq order and generation numbers only increase (their
        # slots grow, and shrink back), so no later read needs an older generation:
        # unmap them (pinned values keep their own mapping, through their Pin).
        for old in [g for g in self._gens if g < gen]:
            self._gens.pop(old).close()
        self._gens[gen] = seg
        self._core.set_data(seg.mm, seg.address, gen, seg.size_bytes)
        return seg

    def _wait_data(self, seq: int, deadline: float, spun: bool) -> None:
        ctrl = self._ctrl  # one mapping throughout (see _Ctrl)
        q, i = ctrl.q, ctrl.i

        def check_writer() -> None:
            pid, start = i[_WRITER_PID // 4], q[_WRITER_START // 8]
            if not _liveness.is_alive(pid, start):
                raise ChannelBroken(f"channel {self.spec.name!r}: the writer (pid {pid}) died")

        self._wait(
            lambda: q[_WRITE_SEQ // 8] > seq,
            _DATA_FUTEX,
            self._waiting_off,
            deadline,
            lambda: ChannelTimeout(f"channel {self.spec.name!r}: timed out waiting for value #{seq}"),
            check_writer,
            _no_spin if spun else self._core.spin,  # try_read may have spun already
            lambda: [(i[_WRITER_PID // 4], q[_WRITER_START // 8])],
        )

    def close(self) -> None:
        if self._closed_locally:
            return
        super().close()
        self._core.set_ctrl(self._ctrl.seg.mm, self._ctrl.addr)  # the closed copy
        self._core.detach()
        for seg in self._gens.values():
            seg.close()
        self._gens.clear()
