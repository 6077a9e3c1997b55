"""The write end of the shared-memory ring (layout and protocol: _shm_ring.py).

The writer owns the data generations it grows: it creates each one, publishes it in the
control segment, and frees it once every reader released every value in it.

A plain value (None, bool, int, float, str, bytes) that fits its region and finds room
is written by the C core in one call (_native.WriterCore.try_write), and any value that
pickles without out-of-band buffers once _serde has pickled it (try_write_meta).
Everything else takes the Python path here; the core holds the state both share (seq,
the current generation, which region holds which value).

Growth and shrinking. A value larger than the slots moves the writer to a bigger
generation; once ``shrink_after`` consecutive values fit the original slot size again,
it moves to a new generation of that size, and the grown one is freed as soon as every
reader released every value in it (a zero-copy value still held keeps its readers'
mapping of it, not the writer's). Why DEFAULT_SHRINK_AFTER = 32: shrinking costs a new
mapping in every process (tens of µs), and a stream that comes back to large values
pays for it with a fresh grown generation, whose pages fault in again on the next large
value (about one extra copy of that value). Every 32 values at most, that is a few
percent of what the large value costs anyway; and a one-off huge value gives its
memory back within 32 values.
"""

from __future__ import annotations

import os
import struct

from . import _liveness, _native, _serde
from ._channel import wrong_end
from ._deadline import deadline_after
from ._errors import ChannelBroken, ChannelClosed, ChannelTimeout, SlotPinned
from ._segment import PAGE_BYTES, Segment, round_up
from ._shm_ring import (
    _ALIGN,
    _CUR_FD,
    _CUR_GEN,
    _CUR_PID,
    _CUR_SLOT_BYTES,
    _DESC_BYTES,
    _LINE,
    _PURE_SPIN_NS,
    _R_PID,
    _R_PINNED,
    _R_RELEASED,
    _R_START,
    _READERS,
    _SLOT_RECORD,
    _SPACE_FUTEX,
    _WRITE_SEQ,
    _WRITER_PID,
    _WRITER_START,
    _WRITER_WAITING,
    _WRITING,
    DEFAULT_LIVENESS_INTERVAL_S,
    DEFAULT_SPIN_S,
    NONE,
    ShmRingSpec,
    _descs_offset,
    _Endpoint,
    _slots_offset,
)

# Consecutive values that fit the original slot size after which grown slots shrink
# back to it (the module docstring says why 32).
DEFAULT_SHRINK_AFTER = 32


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
    """The write end. One per ring, in any process of the node.

    Args:
        shrink_after: grown slots shrink back to their original size once this many
            consecutive values fit it (0: never).
    """

    def __init__(
        self,
        spec: ShmRingSpec,
        *,
        spin_s: float = DEFAULT_SPIN_S,
        liveness_interval_s: float = DEFAULT_LIVENESS_INTERVAL_S,
        shrink_after: int = DEFAULT_SHRINK_AFTER,
    ):
        if shrink_after < 0:
            raise ValueError(f"shrink_after must be >= 0, got {shrink_after}")
        super().__init__(spec, spin_s, liveness_interval_s)
        self._shrink_after = shrink_after
        q, i = self._ctrl.q, self._ctrl.i
        i[_WRITER_PID // 4] = os.getpid()
        q[_WRITER_START // 8] = _liveness.process_start_time(os.getpid()) or 0
        self._gen = q[_CUR_GEN // 8]
        self._data = Segment.open(q[_CUR_PID // 8], q[_CUR_FD // 8], spec.nslots * q[_CUR_SLOT_BYTES // 8])
        self._slot_bytes = q[_CUR_SLOT_BYTES // 8]
        self._base_slot_bytes = self._slot_bytes  # what grown slots shrink back to
        # Older generations still referenced by unreleased slots: (gen, last_seq, segment).
        self._old: list[tuple[int, int, Segment]] = []
        self._released_offs = [(_READERS + _LINE * r + _R_RELEASED) // 8 for r in range(spec.nreaders)]
        self._slots_off = _slots_offset(spec.nreaders)
        self._core = _native.WriterCore(
            self._ctrl.seg.mm,
            self._ctrl.addr,
            spec.nslots,
            spec.nreaders,
            q[_WRITE_SEQ // 8],
            self._spin_ns,
            _PURE_SPIN_NS,
        )
        self._use_data(self._data)
        self._note_regions_in_use(q[_WRITE_SEQ // 8])
        self._attached()

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
        core = self._core
        if core.try_write(value):
            return
        meta, raws = _serde.encode(value)  # before touching the ring: errors leave it intact
        if raws or not core.try_write_meta(meta):
            self._write_encoded(meta, raws, timeout_s, raise_if_pinned)

    def _write(self, value: object, timeout_s: float | None, raise_if_pinned: bool) -> None:
        """The Python path for ``value`` (the fault hook writes through it)."""
        self._write_encoded(*_serde.encode(value), timeout_s, raise_if_pinned)

    def _write_encoded(
        self, meta: bytes, raws: list[memoryview], timeout_s: float | None, raise_if_pinned: bool
    ) -> None:
        """The Python path: any value, waiting for room, growing the slots."""
        self._check_closed()
        core = self._core
        seq = core.seq
        need = seq - self.spec.nslots + 1
        if need > core.min_released and need > core.min_released_now():
            self._wait_space(need, deadline_after(timeout_s), raise_if_pinned)
        if self._old:
            self._free_old_generations()
        offsets, total = _slot_layout(len(meta), raws)
        if total > self._slot_bytes:
            self._grow(total)
        elif self._slot_bytes > self._base_slot_bytes:
            self._count_toward_shrink(total)
        ctrl = self._ctrl  # one mapping throughout (see _Ctrl)
        q = ctrl.q
        q[_WRITING // 8] = seq + 1  # a reader waiting for seq spins through our copy
        try:
            base = core.pick_region() * self._slot_bytes
            self._fill_slot(base, meta, raws, offsets)
            _SLOT_RECORD.pack_into(
                ctrl.seg.view,  # type: ignore[arg-type]
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
        except BaseException:
            q[_WRITING // 8] = 0
            raise
        self._publish()

    def _fill_slot(self, base: int, meta: bytes, raws: list[memoryview], offsets: list[int]) -> None:
        """Copy the buffer table, the pickle stream and the buffers into the region at ``base``."""
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

    def _publish(self) -> None:
        """Publish the value just written (a separate method: the fault hook wraps it)."""
        self._core.publish()

    def _wait_space(self, need: int, deadline: float, raise_if_pinned: bool) -> None:
        def raise_if_pinned_now() -> None:
            pinned = self._pinned_by(need)
            if pinned is not None:
                raise pinned

        def timed_out() -> Exception:
            return self._pinned_by(need) or ChannelTimeout(
                f"channel {self.spec.name!r}: timed out waiting for a free slot "
                f"(all {self.spec.nslots} hold values not yet read by every reader)"
            )

        self._wait(
            lambda: self._core.min_released_now() >= need,
            _SPACE_FUTEX,
            _WRITER_WAITING // 4,
            deadline,
            timed_out,
            lambda: self._check_readers_alive(need),
            lambda: self._core.spin(need),
            self._reader_processes,
            raise_if_pinned_now if raise_if_pinned else None,
        )

    def _reader_processes(self) -> list[tuple[int, int]]:
        """(pid, start time) of every reader (pid 0: not attached yet)."""
        ctrl = self._ctrl
        q, i = ctrl.q, ctrl.i
        lines = [_READERS + _LINE * r for r in range(self.spec.nreaders)]
        return [(i[(line + _R_PID) // 4], q[(line + _R_START) // 8]) for line in lines]

    def _pinned_by(self, need: int) -> SlotPinned | None:
        """The error to raise if a lagging reader pins a slot we need, else None."""
        ctrl = self._ctrl  # one mapping throughout (see _Ctrl)
        q = ctrl.q
        descs = _descs_offset(self.spec.nreaders, self.spec.nslots)
        view = ctrl.seg.view
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
        ctrl = self._ctrl
        q, i = ctrl.q, ctrl.i
        for r, off in enumerate(self._released_offs):
            if q[off] >= need:
                continue
            line = _READERS + _LINE * r
            pid, start = i[(line + _R_PID) // 4], q[(line + _R_START) // 8]
            if not _liveness.is_alive(pid, start):
                raise ChannelBroken(f"channel {self.spec.name!r}: reader {r} (pid {pid}) died")

    def _grow(self, total: int) -> None:
        """Move to a new data generation whose slots hold ``total`` bytes."""
        self._new_generation(round_up(max(2 * self._slot_bytes, total), PAGE_BYTES))

    def _count_toward_shrink(self, total: int) -> None:
        """Count a value of ``total`` bytes written to grown slots (the core counts
        those it writes); the ``shrink_after``-th in a row that fits the original slot
        size moves to a generation of that size."""
        core = self._core
        if self._shrink_after == 0 or total > self._base_slot_bytes:
            core.small_run = 0
        elif core.small_run + 1 >= self._shrink_after:
            self._new_generation(self._base_slot_bytes)
        else:
            core.small_run += 1

    def _new_generation(self, slot_bytes: int) -> None:
        """Write from now on to a new generation with slots of ``slot_bytes``; the
        current one is freed once every value in it is released."""
        gen = self._gen + 1
        seg = Segment.create(self.spec.nslots * slot_bytes, f"{self.spec.name}.data.{gen}")
        if self._closed_locally:  # closed by another thread meanwhile: keep nothing mapped
            seg.close()
            raise ChannelClosed(f"channel {self.spec.name!r} is closed")
        self._old.append((self._gen, self._core.seq - 1, self._data))
        self._data, self._gen, self._slot_bytes = seg, gen, slot_bytes
        self._use_data(seg)
        q = self._ctrl.q
        q[_CUR_GEN // 8], q[_CUR_PID // 8], q[_CUR_FD // 8] = gen, seg.pid, seg.fd
        q[_CUR_SLOT_BYTES // 8] = slot_bytes
        grown = slot_bytes > self._base_slot_bytes
        self._core.set_shrink(self._base_slot_bytes if grown else 0, self._shrink_after)

    def _note_regions_in_use(self, write_seq: int) -> None:
        """Tell the core which regions hold the values already in the ring (a writer
        may attach to a ring another writer wrote to)."""
        view = self._ctrl.seg.view
        assert view is not None
        for slot in range(self.spec.nslots):
            seq, gen, *_, base, _, _ = _SLOT_RECORD.unpack_from(view, self._slots_off + _LINE * slot)
            if seq < write_seq and gen == self._gen:
                self._core.note_region(base // self._slot_bytes, seq)

    def _use_data(self, seg: Segment) -> None:
        """Write to ``seg`` from now on. The core's fast path stays off while older
        generations wait to be freed: only the Python path frees them."""
        self._core.set_data(seg.mm, seg.address, self._gen, seg.pid, seg.fd, self._slot_bytes)
        self._core.fast = not self._old

    def _free_old_generations(self) -> None:
        released = self._core.min_released_now()
        while self._old and self._old[0][1] < released:
            self._old.pop(0)[2].close()
        self._core.fast = not self._old

    def close(self) -> None:
        if self._closed_locally:
            return
        super().close()
        self._core.set_ctrl(self._ctrl.seg.mm, self._ctrl.addr)  # the closed copy
        self._core.detach()
        # The writer owns the generations it grew: readers that mapped them keep them.
        for _, _, seg in self._old:
            seg.close()
        self._old.clear()
        self._data.close()  # unmaps; closes the fd only of a generation we created
