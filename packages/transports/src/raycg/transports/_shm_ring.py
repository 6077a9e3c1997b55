"""The same-node channel: a ring of slots in shared memory, one writer, N readers.

Memory. Two kinds of segment (see _segment.py: memfds, never named in /dev/shm):

- the *control* segment, created by the owner, fixed size, laid out below;
- the *data* segment: ``nslots`` slots of ``slot_bytes`` each. When a value does not
  fit, the writer creates a bigger data segment (a new *generation*) and writes from
  then on there; every slot record says which generation holds its bytes, so readers
  follow, and the writer frees an old generation once every reader released every
  value in it.

Control segment (u64 = 8 bytes, u32 = 4 bytes; every line is 64 bytes so that no two
processes write the same cache line)::

    line 0  @0    set once by the owner, read-only after
            u64 magic | u64 version | u64 nslots | u64 nreaders
    line 1  @64   writer-owned
            u64 write_seq         values published so far
            u32 data_futex        bumped on every publish and on close; readers sleep on it
            u32 writer_pid
            u64 writer_start_time (clock ticks since boot: guards against pid reuse)
            u32 writer_waiting    1 while the writer sleeps on space_futex
    line 2  @128  any endpoint
            u32 closed            0 -> 1 once, never back
            u32 space_futex       bumped by readers on release and on close; the writer
                                  sleeps on it
    line 3  @192  writer-owned: the current data segment
            u64 gen | u64 pid | u64 fd | u64 slot_bytes
    line 4+i @256+64i  reader i-owned
            u64 released_seq      every seq below it is released by reader i
            u32 pid | u32 waiting (1 while reader i sleeps on data_futex)
            u64 start_time
            u64 pinned_seq        oldest seq reader i pins with a zero-copy value, or NONE
    slot s  @SLOTS + 64s  writer-owned, written before the seq is published
            u64 seq | u64 gen | u64 pid | u64 fd | u64 slot_bytes | u64 offset
            u64 meta_len | u64 nbufs
    desc i  @DESCS + 128i reader i-owned: UTF-8 description of the value at pinned_seq

A data slot holds ``nbufs`` (u64 offset, u64 length) pairs, the pickle stream, then each
out-of-band buffer at a 64-byte aligned offset (offsets relative to the slot).

Protocol. Value ``seq`` goes to slot ``seq % nslots``. The writer may reuse a slot for
``seq`` once every reader's released_seq > seq - nslots. Each field has one writer
(except ``closed`` and the futex words, where any change is enough to wake a waiter),
so there are no atomic read-modify-writes; aligned 8-byte stores are single stores.
Waiting spins for ``spin_s``, then sleeps on a futex in slices of at most
``liveness_interval_s``, checking between slices that the peer process is alive.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
import threading
import time
import weakref
from typing import Any

import numpy as np

from . import _futex, _liveness, _serde
from ._channel import Channel, wrong_end
from ._deadline import deadline_after, remaining
from ._errors import ChannelBroken, ChannelClosed, ChannelTimeout, SlotPinned
from ._segment import PAGE_BYTES, Segment, round_up

MAGIC = int.from_bytes(b"RAYCGRNG", "little")
VERSION = 1
NONE = (1 << 64) - 1

# Byte offsets of the fields drawn above.
_NSLOTS, _NREADERS = 16, 24
_WRITE_SEQ, _DATA_FUTEX, _WRITER_PID, _WRITER_START, _WRITER_WAITING = 64, 72, 76, 80, 88
_CLOSED, _SPACE_FUTEX = 128, 132
_CUR_GEN, _CUR_PID, _CUR_FD, _CUR_SLOT_BYTES = 192, 200, 208, 216
_READERS = 256
_R_RELEASED, _R_PID, _R_WAITING, _R_START, _R_PINNED = 0, 8, 12, 16, 24
_LINE = 64
_DESC_BYTES = 128
_SLOT_RECORD = struct.Struct("<8Q")
_ALIGN = 64

DEFAULT_SPIN_S = float(os.environ.get("RAYCG_SPIN_US", "50")) * 1e-6
DEFAULT_LIVENESS_INTERVAL_S = 0.1
# Out-of-band buffers smaller than this in total are copied out of the slot instead of
# pinning it: a few small arrays held by user code must not stall the ring.
DEFAULT_ZERO_COPY_MIN_BYTES = 64 * 1024


def _slots_offset(nreaders: int) -> int:
    return _READERS + _LINE * nreaders


def _descs_offset(nreaders: int, nslots: int) -> int:
    return _slots_offset(nreaders) + _LINE * nslots


def _ctrl_bytes(nreaders: int, nslots: int) -> int:
    return _descs_offset(nreaders, nslots) + _DESC_BYTES * nreaders


@dataclasses.dataclass(frozen=True)
class ShmRingSpec:
    """What a process needs to open an endpoint: small, picklable, no Ray."""

    name: str
    pid: int
    ctrl_fd: int
    nslots: int
    nreaders: int


class _Ctrl:
    """Typed views over the control segment."""

    def __init__(self, seg: Segment):
        assert seg.view is not None
        self.seg = seg
        self.q = seg.view.cast("Q")  # index = byte offset // 8
        self.i = seg.view.cast("I")  # index = byte offset // 4
        self.addr = seg.address

    def release(self) -> None:
        self.q.release()
        self.i.release()
        self.seg.close()


class ShmRing:
    """The owner of a ring: creates its segments and hands out :class:`ShmRingSpec`.

    Args:
        nslots: values that may be written and not yet released by every reader.
        nreaders: readers; each opens the ring with its own index.
        slot_bytes: initial size of a slot; it grows for larger values.
        name: shown in errors and in /proc/<pid>/fd.
    """

    def __init__(self, nslots: int, nreaders: int, slot_bytes: int = 1 << 20, name: str = "ring"):
        if nslots < 1 or nreaders < 1:
            raise ValueError(f"a ring needs nslots >= 1 and nreaders >= 1, got {nslots}, {nreaders}")
        self.name = name
        self._ctrl = Segment.create(_ctrl_bytes(nreaders, nslots), f"{name}.ctrl")
        try:
            self._data = Segment.create(nslots * round_up(max(slot_bytes, _ALIGN), _ALIGN), f"{name}.data.0")
        except BaseException:
            self._ctrl.close()
            raise
        ctrl = _Ctrl(self._ctrl)
        q = ctrl.q
        q[0], q[1], q[_NSLOTS // 8], q[_NREADERS // 8] = MAGIC, VERSION, nslots, nreaders
        q[_CUR_GEN // 8], q[_CUR_PID // 8], q[_CUR_FD // 8] = 0, os.getpid(), self._data.fd
        # Round down to _ALIGN: every slot, and so every buffer in it, starts 64-byte
        # aligned (the segment was rounded up to whole pages, not to nslots * _ALIGN).
        q[_CUR_SLOT_BYTES // 8] = self._data.size_bytes // nslots // _ALIGN * _ALIGN
        for r in range(nreaders):
            q[(_READERS + _LINE * r + _R_PINNED) // 8] = NONE
        ctrl.q.release()
        ctrl.i.release()
        self.spec = ShmRingSpec(name, os.getpid(), self._ctrl.fd, nslots, nreaders)
        self._closed = False

    def open_writer(self, **kwargs: Any) -> ShmRingWriter:
        return ShmRingWriter(self.spec, **kwargs)

    def open_reader(self, index: int, **kwargs: Any) -> ShmRingReader:
        return ShmRingReader(self.spec, index, **kwargs)

    def close(self) -> None:
        """Mark the ring closed (waking every waiter) and drop the owner's segments.

        Endpoints already open keep their mappings until they are dropped; the memory
        is freed by the kernel when the last one goes.
        """
        if self._closed:
            return
        self._closed = True
        _close_shared(self._ctrl)
        self._data.close()
        self._ctrl.close()

    def __enter__(self) -> ShmRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_shared(seg: Segment) -> None:
    """Set the closed flag, bump both futex words and wake everyone."""
    if seg.view is None:
        return
    i = seg.view.cast("I")
    try:
        i[_CLOSED // 4] = 1
        i[_DATA_FUTEX // 4] = (i[_DATA_FUTEX // 4] + 1) & 0xFFFFFFFF
        i[_SPACE_FUTEX // 4] = (i[_SPACE_FUTEX // 4] + 1) & 0xFFFFFFFF
        _futex.fence()
        _futex.futex_wake(seg.address + _DATA_FUTEX)
        _futex.futex_wake(seg.address + _SPACE_FUTEX)
    finally:
        i.release()


class _Endpoint(Channel):
    def __init__(self, spec: ShmRingSpec, spin_s: float, liveness_interval_s: float):
        # Until a subclass finishes attaching, close() (and so __del__) is a no-op: an
        # endpoint that failed to open must not close the channel for everyone.
        self._closed_locally = True
        self._pid = os.getpid()
        self.spec = spec
        self._spin_ns = int(spin_s * 1e9)
        self._slice_s = liveness_interval_s
        self._ctrl = _Ctrl(Segment.open(spec.pid, spec.ctrl_fd, _ctrl_bytes(spec.nreaders, spec.nslots)))
        q = self._ctrl.q
        if q[0] != MAGIC or q[1] != VERSION or q[_NSLOTS // 8] != spec.nslots:
            self._ctrl.release()
            raise ChannelBroken(f"channel {spec.name!r}: the control segment is not a raycg ring")

    def _check_closed(self) -> None:
        if self._ctrl.i[_CLOSED // 4]:
            raise ChannelClosed(f"channel {self.spec.name!r} is closed")

    def _sleep(self, futex_off: int, expected: int, deadline: float) -> bool:
        """One bounded futex sleep; False if the deadline has passed."""
        left = remaining(deadline)
        if left <= 0:
            return False
        _futex.futex_wait(self._ctrl.addr + futex_off, expected, min(left, self._slice_s))
        return True

    def close(self) -> None:
        if self._closed_locally:
            return
        self._closed_locally = True
        _close_shared(self._ctrl.seg)

    def __del__(self) -> None:
        # Only in the process that opened it: a forked child that drops its inherited
        # copy of an endpoint must not close the parent's channel.
        if getattr(self, "_pid", None) != os.getpid():
            return
        # Collected in a cycle with its mapping, the memory may already be unmapped
        # (weakref callbacks run before __del__): then there is nothing to close.
        ctrl = getattr(self, "_ctrl", None)
        if ctrl is None or not ctrl.seg.mapped:
            return
        try:
            self.close()
        except Exception:
            pass


def _slot_layout(meta_len: int, raws: list[memoryview]) -> tuple[list[int], int]:
    """Where each buffer goes in a slot (offsets from its start), and the bytes it needs.

    A slot holds the buffer table (u64 offset, u64 length per buffer), the pickle stream,
    then each buffer at a 64-byte aligned offset.
    """
    if not raws:
        return [], meta_len
    offsets = []
    pos = round_up(16 * len(raws) + meta_len, _ALIGN)
    for raw in raws:
        offsets.append(pos)
        pos = round_up(pos + raw.nbytes, _ALIGN)
    return offsets, pos


class ShmRingWriter(_Endpoint):
    """The write end. One per ring, in any process of the node."""

    def __init__(
        self,
        spec: ShmRingSpec,
        *,
        spin_s: float = DEFAULT_SPIN_S,
        liveness_interval_s: float = DEFAULT_LIVENESS_INTERVAL_S,
    ):
        super().__init__(spec, spin_s, liveness_interval_s)
        q, i = self._ctrl.q, self._ctrl.i
        self._seq = q[_WRITE_SEQ // 8]
        i[_WRITER_PID // 4] = os.getpid()
        q[_WRITER_START // 8] = _liveness.process_start_time(os.getpid()) or 0
        self._gen = q[_CUR_GEN // 8]
        self._data = Segment.open(q[_CUR_PID // 8], q[_CUR_FD // 8], spec.nslots * q[_CUR_SLOT_BYTES // 8])
        self._slot_bytes = q[_CUR_SLOT_BYTES // 8]
        # Older generations still referenced by unreleased slots: (gen, last_seq, segment).
        self._old: list[tuple[int, int, Segment]] = []
        self._released_offs = [(_READERS + _LINE * r + _R_RELEASED) // 8 for r in range(spec.nreaders)]
        self._waiting_offs = [(_READERS + _LINE * r + _R_WAITING) // 4 for r in range(spec.nreaders)]
        self._slots_off = _slots_offset(spec.nreaders)
        self._min_released = 0
        self._closed_locally = False

    def __repr__(self) -> str:
        return f"ShmRingWriter({self.spec.name!r})"

    def read(self, timeout_s: float | None = None) -> object:
        raise wrong_end(self, "read")

    def write(self, value: object, timeout_s: float | None = None, *, raise_if_pinned: bool = False) -> None:
        """Publish ``value``.

        Args:
            raise_if_pinned: raise SlotPinned as soon as the slot needed is held by a
                reader's zero-copy value, instead of waiting for it.

        Raises:
            ValueNotSerializable: nothing was written; the channel stays usable.
            SlotPinned: the wait timed out (or raise_if_pinned) on a pinned slot.
        """
        meta, raws = _serde.encode(value)  # before touching the ring: errors leave it intact
        self._check_closed()
        seq = self._seq
        need = seq - self.spec.nslots + 1
        if need > self._min_released:
            self._min_released = self._read_min_released()
            if need > self._min_released:
                self._wait_space(need, deadline_after(timeout_s), raise_if_pinned)
        if self._old:
            self._free_old_generations()
        offsets, total = _slot_layout(len(meta), raws)
        if total > self._slot_bytes:
            self._grow(total)
        base = (seq % self.spec.nslots) * self._slot_bytes
        self._fill_slot(base, meta, raws, offsets)
        _SLOT_RECORD.pack_into(
            self._ctrl.seg.view,  # type: ignore[arg-type]
            self._slots_off + _LINE * (seq % self.spec.nslots),
            seq,
            self._gen,
            self._data.pid,
            self._data.fd,
            self._slot_bytes,
            base,
            len(meta),
            len(raws),
        )
        self._publish(seq + 1)

    def _fill_slot(self, base: int, meta: bytes, raws: list[memoryview], offsets: list[int]) -> None:
        """Copy the buffer table, the pickle stream and the buffers into the slot at ``base``."""
        view = self._data.view
        assert view is not None
        table: list[int] = []
        for off, raw in zip(offsets, raws):
            table += (off, raw.nbytes)
            view[base + off : base + off + raw.nbytes] = raw
        if raws:
            struct.pack_into(f"<{2 * len(raws)}Q", view, base, *table)
        at = base + 16 * len(raws)
        view[at : at + len(meta)] = meta

    def _publish(self, write_seq: int) -> None:
        q, i = self._ctrl.q, self._ctrl.i
        q[_WRITE_SEQ // 8] = write_seq
        self._seq = write_seq
        i[_DATA_FUTEX // 4] = (i[_DATA_FUTEX // 4] + 1) & 0xFFFFFFFF
        _futex.fence()
        for off in self._waiting_offs:
            if i[off]:
                _futex.futex_wake(self._ctrl.addr + _DATA_FUTEX)
                break

    def _read_min_released(self) -> int:
        q = self._ctrl.q
        return min(q[off] for off in self._released_offs)

    def _wait_space(self, need: int, deadline: float, raise_if_pinned: bool) -> None:
        i = self._ctrl.i
        spin_end = time.perf_counter_ns() + self._spin_ns
        while time.perf_counter_ns() < spin_end:
            if self._read_min_released() >= need or i[_CLOSED // 4]:
                break
            os.sched_yield()  # on a busy node, let the process we wait for run
        while True:
            self._check_closed()
            self._min_released = self._read_min_released()
            if self._min_released >= need:
                return
            pinned = self._pinned_by(need)
            if pinned is not None and raise_if_pinned:
                raise pinned
            expected = i[_SPACE_FUTEX // 4]
            i[_WRITER_WAITING // 4] = 1
            _futex.fence()
            if self._read_min_released() >= need or i[_CLOSED // 4]:
                i[_WRITER_WAITING // 4] = 0
                continue
            slept = self._sleep(_SPACE_FUTEX, expected, deadline)
            i[_WRITER_WAITING // 4] = 0
            if not slept:
                self._check_closed()
                if pinned is not None:
                    raise pinned
                raise ChannelTimeout(
                    f"channel {self.spec.name!r}: timed out waiting for a free slot "
                    f"(all {self.spec.nslots} hold values not yet read by every reader)"
                )
            # Closed takes precedence over a dead peer: one that closed, then exited, is
            # not a fault.
            if self._read_min_released() < need and not i[_CLOSED // 4]:
                self._check_readers_alive(need)

    def _pinned_by(self, need: int) -> SlotPinned | None:
        """The error to raise if a lagging reader pins a slot we need, else None."""
        q = self._ctrl.q
        descs = _descs_offset(self.spec.nreaders, self.spec.nslots)
        view = self._ctrl.seg.view
        assert view is not None
        for r, off in enumerate(self._released_offs):
            pinned_seq = q[(_READERS + _LINE * r + _R_PINNED) // 8]
            if q[off] < need and pinned_seq != NONE and pinned_seq < need:
                raw = bytes(view[descs + _DESC_BYTES * r : descs + _DESC_BYTES * (r + 1)])
                desc = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
                return SlotPinned(
                    f"channel {self.spec.name!r}: the next slot is pinned by reader {r}, "
                    f"which still holds a zero-copy value from it: {desc} (value #{pinned_seq}); "
                    "drop the value (or copy it) to free the slot",
                    reader_index=r,
                    seq=pinned_seq,
                    description=desc,
                )
        return None

    def _check_readers_alive(self, need: int) -> None:
        q, i = self._ctrl.q, self._ctrl.i
        for r, off in enumerate(self._released_offs):
            if q[off] >= need:
                continue
            line = _READERS + _LINE * r
            pid, start = i[(line + _R_PID) // 4], q[(line + _R_START) // 8]
            if not _liveness.is_alive(pid, start):
                raise ChannelBroken(f"channel {self.spec.name!r}: reader {r} (pid {pid}) died")

    def _grow(self, total: int) -> None:
        """Move to a new data generation whose slots hold ``total`` bytes."""
        slot_bytes = round_up(max(2 * self._slot_bytes, total), PAGE_BYTES)
        gen = self._gen + 1
        seg = Segment.create(self.spec.nslots * slot_bytes, f"{self.spec.name}.data.{gen}")
        self._old.append((self._gen, self._seq - 1, self._data))
        self._data, self._gen, self._slot_bytes = seg, gen, slot_bytes
        q = self._ctrl.q
        q[_CUR_GEN // 8], q[_CUR_PID // 8], q[_CUR_FD // 8] = gen, seg.pid, seg.fd
        q[_CUR_SLOT_BYTES // 8] = slot_bytes

    def _free_old_generations(self) -> None:
        released = self._read_min_released()
        while self._old and self._old[0][1] < released:
            self._old.pop(0)[2].close()

    def close(self) -> None:
        if self._closed_locally:
            return
        super().close()
        # The writer owns the generations it grew: readers that mapped them keep them.
        for _, _, seg in self._old:
            seg.close()
        self._old.clear()
        self._data.close()  # unmaps; closes the fd only of a generation we created


def _on_unpin(reader_ref: weakref.ref[ShmRingReader], unpinned: collections.deque[int], seq: int) -> None:
    """Finalizer of a zero-copy value's slot view: free the slot at once, so that a
    writer waiting for it proceeds even while the reader is idle or blocked."""
    unpinned.append(seq)
    reader = reader_ref()
    if reader is not None:
        reader._drain_unpinned()


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
        self._next = q[self._released_off]
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
        self._closed_locally = False

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
    def next_seq(self) -> int:
        """The sequence number the next read returns."""
        return self._next

    def read(self, timeout_s: float | None = None, *, copy: bool = False) -> object:
        """The next value. ``copy=True`` copies its buffers out of the slot instead of
        pinning it (for values that will be kept a while, e.g. in a result buffer)."""
        q, i = self._ctrl.q, self._ctrl.i
        if self._unpinned:
            self._drain_unpinned()  # publish dropped values before we may sleep
        seq = self._next
        if q[_WRITE_SEQ // 8] <= seq or i[_CLOSED // 4]:
            self._wait_data(seq, deadline_after(timeout_s))
        rec = _SLOT_RECORD.unpack_from(
            self._ctrl.seg.view,  # type: ignore[arg-type]
            self._slots_off + _LINE * (seq % self.spec.nslots),
        )
        r_seq, gen, pid, fd, slot_bytes, base, meta_len, nbufs = rec
        if r_seq != seq:
            raise ChannelBroken(f"channel {self.spec.name!r}: slot holds value #{r_seq}, expected #{seq}")
        seg = self._gens.get(gen)
        if seg is None:
            seg = self._map_generation(gen, pid, fd, slot_bytes)
        view = seg.view
        assert view is not None
        self._next = seq + 1
        if not nbufs:
            try:
                return pickle.loads(view[base : base + meta_len])
            finally:  # a value that fails to unpickle is consumed all the same
                self._release_through(seq + 1)
        return self._read_with_buffers(seq, seg, base, meta_len, nbufs, copy)

    def _read_with_buffers(
        self, seq: int, seg: Segment, base: int, meta_len: int, nbufs: int, copy: bool = False
    ) -> object:
        view = seg.view
        assert view is not None
        table = struct.unpack_from(f"<{2 * nbufs}Q", view, base)
        meta = view[base + 16 * nbufs : base + 16 * nbufs + meta_len]
        if copy or sum(table[1::2]) < self._zero_copy_min:
            bufs = [bytearray(view[base + o : base + o + n]) for o, n in zip(table[0::2], table[1::2])]
            try:
                return pickle.loads(meta, buffers=bufs)
            finally:
                self._release_through(seq + 1)
        # Zero copy: one read-only view of the slot, owned by an ndarray we can watch.
        with self._pin_lock:
            self._pinned[seq] = "a zero-copy value being decoded"
        count = table[-2] + table[-1]
        pin = np.frombuffer(seg.mm, dtype=np.uint8, count=count, offset=base)  # type: ignore[call-overload]
        weakref.finalize(pin, _on_unpin, self._self_ref, self._unpinned, seq).atexit = False
        pv = pin.data.toreadonly()
        bufs2 = [pv[o : o + n] for o, n in zip(table[0::2], table[1::2])]
        try:
            value = pickle.loads(meta, buffers=bufs2)
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
        q, i = self._ctrl.q, self._ctrl.i
        q[self._released_off] = released
        i[_SPACE_FUTEX // 4] = (i[_SPACE_FUTEX // 4] + 1) & 0xFFFFFFFF
        _futex.fence()
        if i[_WRITER_WAITING // 4]:
            _futex.futex_wake(self._ctrl.addr + _SPACE_FUTEX)

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
        if self._ctrl.seg.view is None:
            return
        while self._unpinned:
            self._pinned.pop(self._unpinned.popleft(), None)
        oldest = min(self._pinned) if self._pinned else NONE
        pin = (oldest, self._pinned.get(oldest, ""))
        if pin != self._published_pin:
            # The description first: the writer reads pinned_seq, then the description.
            desc = pin[1].encode()[: _DESC_BYTES - 1] + b"\0"
            self._ctrl.seg.view[self._desc_off : self._desc_off + len(desc)] = desc
            self._ctrl.q[self._pinned_off] = oldest
            self._published_pin = pin
        released = min(oldest, self._next)
        if released > self._ctrl.q[self._released_off]:  # released_seq only moves forward
            self._publish_released(released)

    def _map_generation(self, gen: int, pid: int, fd: int, slot_bytes: int) -> Segment:
        seg = Segment.open(pid, fd, self.spec.nslots * slot_bytes)
        # Values are written in seq order and generations only grow, so no later read
        # needs an older generation: unmap them (pinned values keep their own mapping).
        for old in [g for g in self._gens if g < gen]:
            self._gens.pop(old).close()
        self._gens[gen] = seg
        return seg

    def _wait_data(self, seq: int, deadline: float) -> None:
        q, i = self._ctrl.q, self._ctrl.i
        spin_end = time.perf_counter_ns() + self._spin_ns
        while time.perf_counter_ns() < spin_end:
            if q[_WRITE_SEQ // 8] > seq or i[_CLOSED // 4]:
                break
            os.sched_yield()  # on a busy node, let the process we wait for run
        while True:
            self._check_closed()
            if q[_WRITE_SEQ // 8] > seq:
                return
            expected = i[_DATA_FUTEX // 4]
            i[self._waiting_off] = 1
            _futex.fence()
            if q[_WRITE_SEQ // 8] > seq or i[_CLOSED // 4]:
                i[self._waiting_off] = 0
                continue
            slept = self._sleep(_DATA_FUTEX, expected, deadline)
            i[self._waiting_off] = 0
            if not slept:
                self._check_closed()
                raise ChannelTimeout(f"channel {self.spec.name!r}: timed out waiting for value #{seq}")
            if q[_WRITE_SEQ // 8] <= seq and not i[_CLOSED // 4]:  # closed beats dead
                pid, start = i[_WRITER_PID // 4], q[_WRITER_START // 8]
                if not _liveness.is_alive(pid, start):
                    raise ChannelBroken(f"channel {self.spec.name!r}: the writer (pid {pid}) died")

    def close(self) -> None:
        if self._closed_locally:
            return
        super().close()
        for seg in self._gens.values():
            seg.close()
        self._gens.clear()
