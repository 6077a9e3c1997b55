"""The same-node channel: a ring of slots in shared memory, one writer, N readers.

Memory. Two kinds of segment (see _segment.py: memfds, never named in /dev/shm):

- the *control* segment, created by the owner, fixed size, laid out below;
- the *data* segment: ``nslots`` slots of ``slot_bytes`` each. When a value does not
  fit, the writer creates a bigger data segment (a new *generation*) and writes from
  then on there; every slot record says which generation holds its bytes, so readers
  follow, and the writer frees an old generation once every reader released every
  value in it. After ``shrink_after`` consecutive values that fit the original size,
  the writer moves to a new generation of that size (_shm_writer.py): generation
  numbers only increase, sizes grow and shrink back.

Control segment (u64 = 8 bytes, u32 = 4 bytes; every line is 64 bytes so that the
fields of different processes do not share a cache line; the exceptions, the futex
words and the closed flag, are written rarely: see Protocol)::

    line 0  @0    set once by the owner, read-only after
            u64 magic | u64 version | u64 nslots | u64 nreaders
    line 1  @64   writer-owned
            u64 write_seq         values published so far
            u32 data_futex        bumped on a publish that finds a reader asleep, and by
                                  whichever endpoint closes; readers sleep on it
            u32 writer_pid
            u64 writer_start_time (clock ticks since boot: guards against pid reuse)
            u32 writer_waiting    1 while the writer sleeps on space_futex
            u32 pad
            u64 writing           seq + 1 while the writer copies value seq into its
                                  slot (large values): a reader waiting for that value
                                  keeps spinning instead of going to sleep
    line 2  @128  any endpoint
            u32 closed            0 -> 1 (closed) or 2 (broken: the gRPC stream
                                  that feeds the ring failed) once, never back
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

The data segment has ``nslots`` *regions* of ``slot_bytes``. A region holds ``nbufs``
(u64 offset, u64 length) pairs, the pickle stream, then each out-of-band buffer at a
64-byte aligned offset (offsets relative to the region).

Protocol. Value ``seq`` is described by slot record ``seq % nslots``, and may be
written once every reader's released_seq > seq - nslots. Its bytes go to the free
region (one whose last value every reader released) written most recently, whose
lines are likeliest still in cache: the record's ``offset`` says which. With one value
in flight, a ring thus keeps reusing the same region, as a hand-written exchange
buffer would. Each field has one writer, except three: ``closed`` (any endpoint
sets it, 0 -> 1 only), and the two futex words, which several processes bump
(``space_futex``: every reader; both: whoever closes). A bump is an atomic increment
(``lock xadd``, in C, for the Python path too): with a plain load-add-store, two
bumpers could store the same value, or one a stale one, equal to what a sleeper
expects, and its FUTEX_WAIT would sleep through the wake-up for a whole slice. Every
other store is a plain aligned store (a single store on x86-64).
Waiting spins for ``spin_s``, then sleeps on a futex in slices of at most
``liveness_interval_s``, checking between slices that the peer process is alive; once
the peers are watched by pidfd (their exit bumps the futex word: _liveness.watch), in
slices of DEFAULT_WATCHED_SLICE_S.

Modules: this one holds the layout, the owner (:class:`ShmRing`) and what both ends
share; the ends are in _shm_writer.py and _shm_reader.py, and their per-call hot path
(plain values, fences, futexes, zero-copy pins) is in C: _native.c and its parts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import struct
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _futex, _liveness, _native
from ._channel import Channel
from ._deadline import remaining
from ._errors import ChannelBroken, ChannelClosed
from ._segment import Segment, round_up

if TYPE_CHECKING:
    from ._shm_reader import ShmRingReader
    from ._shm_writer import ShmRingWriter

MAGIC = int.from_bytes(b"RAYCGRNG", "little")
VERSION = 2
NONE = (1 << 64) - 1

# Byte offsets of the fields drawn above.
_NSLOTS, _NREADERS = 16, 24
_WRITE_SEQ, _DATA_FUTEX, _WRITER_PID, _WRITER_START, _WRITER_WAITING, _WRITING = 64, 72, 76, 80, 88, 96
_CLOSED, _SPACE_FUTEX = 128, 132
# Values of the closed word: a ring fed from another node (_grpc_receiver.py) is
# *broken*, not closed, when its stream fails, so its readers raise ChannelBroken.
_CLOSED_BY_ENDPOINT, _BROKEN = 1, 2
_CUR_GEN, _CUR_PID, _CUR_FD, _CUR_SLOT_BYTES = 192, 200, 208, 216
_READERS = 256
_R_RELEASED, _R_PID, _R_WAITING, _R_START, _R_PINNED = 0, 8, 12, 16, 24
_LINE = 64
_DESC_BYTES = 128
_SLOT_RECORD = struct.Struct("<8Q")
_ALIGN = 64

_LAYOUT = {
    "WRITE_SEQ": _WRITE_SEQ,
    "DATA_FUTEX": _DATA_FUTEX,
    "WRITER_WAITING": _WRITER_WAITING,
    "WRITING": _WRITING,
    "CLOSED": _CLOSED,
    "SPACE_FUTEX": _SPACE_FUTEX,
    "READERS": _READERS,
    "LINE": _LINE,
    "R_RELEASED": _R_RELEASED,
    "R_WAITING": _R_WAITING,
    "SLOT_WORDS": _SLOT_RECORD.size // 8,
}
if {k: _native.LAYOUT[k] for k in _LAYOUT} != _LAYOUT:
    raise ImportError(
        "raycg.transports._native was built for another ring layout than _shm_ring.py's: "
        "reinstall raycg (pip install -e .) to rebuild it"
    )

DEFAULT_SPIN_S = float(os.environ.get("RAYCG_SPIN_US", "50")) * 1e-6
DEFAULT_LIVENESS_INTERVAL_S = 0.1
# The sleep slice of a waiter whose peers are all watched by pidfd (_liveness.watch):
# their exit wakes it, so the slice only bounds what nothing else would catch (a peer
# replaced by another process, say). Idle, that is one wake-up per 5 s, not ten a second.
DEFAULT_WATCHED_SLICE_S = 5.0
# The first microseconds of a spin poll without a syscall (a peer on another core
# answers within them); after that each poll also yields the core (see _native.c).
_PURE_SPIN_NS = 3_000
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
    """Typed views over the control segment.

    An endpoint's close() unmaps its control segment at once, not when the endpoint is
    garbage, although other threads may still be inside its methods (a read that a
    teardown's close wakes, a finalizer that unpins a value). So nothing releases the
    mapping explicitly: close() swaps the endpoint's ``_ctrl`` for a private copy that
    says closed (:meth:`closed_copy`) and drops its references, and the memory goes
    with the last one. A method that uses the control segment takes ``ctrl =
    self._ctrl`` once and uses only that: its local keeps the mapping it started
    with, views and raw addresses alike, until it returns (a late call finds the copy
    and raises ChannelClosed). The C cores hold it the same way across each call.
    """

    def __init__(self, seg: Segment):
        assert seg.view is not None
        self.seg = seg
        self.q = seg.view.cast("Q")  # index = byte offset // 8
        self.i = seg.view.cast("I")  # index = byte offset // 4
        self.addr = seg.address

    def closed_copy(self) -> _Ctrl:
        """A copy of the segment as it is now (closed), in private memory."""
        return _Ctrl(Segment.private_copy(self.seg))

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
        if platform.machine() not in ("x86_64", "AMD64"):
            # The protocol relies on x86-64's store ordering (docs/transports.md).
            raise NotImplementedError(
                f"raycg's shared-memory ring supports x86-64 only, not {platform.machine()!r}"
            )
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
        from ._shm_writer import ShmRingWriter  # the endpoints' modules import this one

        return ShmRingWriter(self.spec, **kwargs)

    def open_reader(self, index: int, **kwargs: Any) -> ShmRingReader:
        from ._shm_reader import ShmRingReader

        return ShmRingReader(self.spec, index, **kwargs)

    def close(self) -> None:
        """Mark the ring closed (waking every waiter) and drop the owner's segments.

        Endpoints already open keep their mappings until they are closed (or dropped);
        the memory is freed by the kernel when the last one goes.
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


def _close_shared(seg: Segment, state: int = _CLOSED_BY_ENDPOINT) -> None:
    """Set the closed word to ``state`` (unless it is set already), bump both futex
    words (atomically: other endpoints bump them too) and wake everyone."""
    if seg.view is None:
        return
    i = seg.view.cast("I")
    try:
        if not i[_CLOSED // 4]:
            i[_CLOSED // 4] = state
        _futex.fence()  # the flag before the bumps (each is a full barrier as well)
        _futex.bump_and_wake(seg.address + _DATA_FUTEX)
        _futex.bump_and_wake(seg.address + _SPACE_FUTEX)
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
        self._watched_slice_s = max(liveness_interval_s, DEFAULT_WATCHED_SLICE_S)
        # Our peers' processes, watched by pidfd (None: they cannot be), until we close.
        self._watches: dict[tuple[int, int], _liveness.PeerWatch | None] = {}
        self._ctrl = _Ctrl(Segment.open(spec.pid, spec.ctrl_fd, _ctrl_bytes(spec.nreaders, spec.nslots)))
        q = self._ctrl.q
        if q[0] != MAGIC or q[1] != VERSION or q[_NSLOTS // 8] != spec.nslots:
            self._ctrl.release()
            raise ChannelBroken(f"channel {spec.name!r}: the control segment is not a raycg ring")

    def _check_closed(self) -> None:
        state = self._ctrl.i[_CLOSED // 4]
        if state == _BROKEN:
            raise ChannelBroken(f"channel {self.spec.name!r} is broken: the stream that feeds it failed")
        if state:
            raise ChannelClosed(f"channel {self.spec.name!r} is closed")

    def _wait(
        self,
        ready: Callable[[], bool],
        futex_off: int,
        waiting_index: int,
        deadline: float,
        on_timeout: Callable[[], Exception],
        check_peers: Callable[[], None],
        spin: Callable[[], object],
        peers: Callable[[], list[tuple[int, int]]],
        before_sleep: Callable[[], None] | None = None,
    ) -> None:
        """Until ``ready()``: the one waiting protocol of both ends.

        ``spin()`` first (the end's C core: spin_until in _native.c, for ``spin_s``).
        Then sleep on the futex word at ``futex_off`` in slices of at most
        ``liveness_interval_s``, saying so in the u32 flag ``waiting_index`` (the peer
        changes the word and wakes us only when the flag is set; we read the word
        before setting the flag, so that wake-up cannot be missed). Between slices,
        ``check_peers`` raises if the process we wait for is gone; a closed channel
        takes precedence over a dead peer (one that closed, then exited, is no fault).
        Where every process in ``peers()`` ((pid, start time) of those we wait for) is
        watched by pidfd, its exit bumps our futex word, and the slices are long.
        """
        ctrl = self._ctrl  # one mapping throughout, even if close() swaps it meanwhile
        i, addr = ctrl.i, ctrl.addr
        spin()
        while True:
            self._check_closed()
            if ready():
                return
            if before_sleep is not None:
                before_sleep()
            expected = i[futex_off // 4]
            # After reading the word: a peer that exits from now on changes it.
            slice_s = self._sleep_slice(peers(), check_peers)
            i[waiting_index] = 1
            _futex.fence()
            if ready() or i[_CLOSED // 4]:
                i[waiting_index] = 0
                continue
            left = remaining(deadline)
            if left > 0:
                _futex.futex_wait(addr + futex_off, expected, min(left, slice_s))
            i[waiting_index] = 0
            if left <= 0:
                self._check_closed()
                raise on_timeout()
            if not ready() and not i[_CLOSED // 4]:
                check_peers()

    def _sleep_slice(self, peers: list[tuple[int, int]], check_peers: Callable[[], None]) -> float:
        """The long slice if every peer is watched and alive; else the liveness interval
        (a peer not attached yet, no pidfds, or one that died: ``check_peers`` raises if
        it is one we wait for)."""
        watched = True
        for pid, start in peers:
            w = self._watch(pid, start)
            if w is None:
                watched = False
            elif w.dead:
                check_peers()
                watched = False
        return self._watched_slice_s if watched else self._slice_s

    def _watch(self, pid: int, start: int) -> _liveness.PeerWatch | None:
        if pid <= 0 or self._closed_locally:
            return None
        key = (pid, start)
        if key in self._watches:
            return self._watches[key]
        ctrl = self._ctrl  # the waker holds the very mapping it bumps
        wake = functools.partial(_wake_sleepers, ctrl.seg.mm, ctrl.addr)
        w = self._watches[key] = _liveness.watch(pid, start, wake)
        # A close() on another thread (teardown, while this one goes to sleep) may have
        # run its _unwatch between the check above and the insertion: the new watch,
        # whose waker holds the control mapping, would then outlive the endpoint for as
        # long as the peer lives. close() sets the flag before it unwatches, so seeing it
        # clear here means its _unwatch has yet to pop what we inserted.
        if self._closed_locally:
            _unwatch(self._watches)
        return w

    def _attached(self) -> None:
        """Called by a subclass once it is open: from now on, dropping the endpoint
        closes the channel, however it is collected.

        Not ``__del__``: collected in a reference cycle, the endpoint's mapping would be
        unmapped first (weakref callbacks run before ``__del__``) and the channel left
        open, with its peers waiting on it for good. The finalizer holds the control
        segment itself, so the segment is still mapped when it runs.
        """
        self._closed_locally = False
        self._finalizer = weakref.finalize(self, _close_on_drop, self._ctrl.seg, self._pid, self._watches)
        self._finalizer.atexit = False  # a process that exits is a dead peer, not a close

    def close(self) -> None:
        """Close the channel for every endpoint (waking every waiter) and unmap this
        one's control segment: at once, or as soon as a call still running on another
        thread returns (see _Ctrl). Subclasses then hand their core the copy and drop
        their data mappings (a zero-copy value pins its own)."""
        if self._closed_locally:
            return
        self._closed_locally = True
        self._finalizer.detach()
        ctrl = self._ctrl
        _close_shared(ctrl.seg)
        _unwatch(self._watches)
        self._ctrl = ctrl.closed_copy()  # after _close_shared: the copy says closed


def _close_on_drop(ctrl: Segment, pid: int, watches: dict[Any, _liveness.PeerWatch | None]) -> None:
    # Only in the process that opened the endpoint: a forked child that drops its
    # inherited copy must not close the parent's channel.
    if os.getpid() == pid:
        _close_shared(ctrl)
        _unwatch(watches)


def _unwatch(watches: dict[Any, _liveness.PeerWatch | None]) -> None:
    while watches:
        w = watches.popitem()[1]
        if w is not None:
            w.close()


def _wake_sleepers(mm: object, addr: int) -> None:
    """A watched peer exited: wake whoever sleeps on this ring (from the watch thread).
    ``mm``, the control mapping's exporter, keeps the words mapped while we are called."""
    _futex.bump_and_wake(addr + _DATA_FUTEX)
    _futex.bump_and_wake(addr + _SPACE_FUTEX)
