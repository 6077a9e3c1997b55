"""The receiving end of one gRPC stream: values from another node into a local ring.

The receiver is the write end of a shared-memory ring on its node, so the readers
there read as on one node, zero-copy. Two of gRPC's handler threads serve a stream,
one per call (_grpc_wire.py):

- *intake* (the values call's, in :meth:`Receiver.take`) reads the writer's messages,
  reassembles each value and writes it into the ring. It never waits for room: the
  writer only sends a value the ring has a free slot for (below).
- *credits* (the credits call's, iterating :meth:`Receiver.serve`) tells the writer
  how many values every reader released, as soon as that grows: the writer may have at
  most ``nslots`` values beyond it. So the writer blocks exactly when the remote ring
  is full, as it would on a local ring, and a slow reader holds it back instead of
  filling memory on either side.

A stream that ends without the writer's close message (the writer died, the network
was cut, a message was lost) marks the ring *broken*: its readers raise ChannelBroken.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from . import _futex
from . import _grpc_wire as wire
from ._errors import ChannelBroken, ChannelClosed, ChannelError
from ._grpc_config import POLL_S
from ._shm_ring import (
    _BROKEN,
    _CLOSED,
    _CLOSED_BY_ENDPOINT,
    _SPACE_FUTEX,
    _WRITER_WAITING,
    ShmRingSpec,
    _close_shared,
)
from ._shm_writer import ShmRingWriter

# A value without out-of-band buffers up to this size tries the ring's C fast path.
_FAST_META_BYTES = 64 * 1024


class RingFeed:
    """A ring's write end, written with values another node already encoded.

    The ring's own ``write`` takes a Python value; decoding one here only to encode it
    again would cost a copy and would unpickle user classes in this process. So this
    class uses the writer's encoded-value path, and its state, in this one place.
    """

    def __init__(self, spec: ShmRingSpec):
        # No spin: the credit thread waits for releases that take a network round trip
        # to matter, and a spin would hold the GIL from the intake thread.
        self.writer = ShmRingWriter(spec, spin_s=0, liveness_interval_s=POLL_S)
        self._base = self.writer._core.seq

    def put(self, meta: memoryview, raws: list[memoryview]) -> None:
        """Write one value; there is room (the writer spends only the credits we gave)."""
        w = self.writer
        if not raws and len(meta) <= _FAST_META_BYTES:
            small = bytes(meta)
            if w._core.try_write_meta(small):
                return
            w._write_encoded(small, [], 0, False)
        else:
            w._write_encoded(meta, raws, 0, False)  # type: ignore[arg-type]

    def released(self) -> int:
        """Values of this stream every reader released."""
        return int(self.writer._core.min_released_now()) - self._base

    def word(self) -> int:
        """The futex word :meth:`wait` sleeps on: read it before deciding to wait, so that
        a :meth:`poke` after the decision still wakes the wait."""
        return int(self.writer._ctrl.i[_SPACE_FUTEX // 4])

    def wait(self, count: int, expected: int, timeout_s: float, *, on_release: bool) -> None:
        """Sleep until :meth:`poke` is called, ``timeout_s`` passes, or (``on_release``)
        ``count`` values are released. With ``on_release`` the flag tells releasing
        readers to wake us (the ring's writer-side futex protocol); without it they
        don't, so a reader's release costs this thread no wake-up.

        Raises:
            ChannelClosed, ChannelBroken: the ring was closed or broke, or a reader died.
        """
        ctrl = self.writer._ctrl  # one mapping throughout: a close() swaps it (_shm_ring._Ctrl)
        i, addr = ctrl.i, ctrl.addr
        if on_release:
            i[_WRITER_WAITING // 4] = 1
            _futex.fence()  # Dekker: our flag before our load of the released counts
        try:
            if not (on_release and self.released() >= count) and not i[_CLOSED // 4]:
                _futex.futex_wait(addr + _SPACE_FUTEX, expected, timeout_s)
        finally:
            i[_WRITER_WAITING // 4] = 0
        self.writer._check_closed()
        if self.released() < count:
            self.writer._check_readers_alive(self._base + count)

    def poke(self) -> None:
        """Wake a :meth:`wait` at once."""
        ctrl = self.writer._ctrl  # holds the mapping while we bump it
        _futex.bump_and_wake(ctrl.addr + _SPACE_FUTEX)

    def end(self, broken: bool) -> None:
        """Mark the ring closed (or broken), waking its readers; keep it mapped."""
        _close_shared(self.writer._ctrl.seg, _BROKEN if broken else _CLOSED_BY_ENDPOINT)

    def close(self) -> None:
        """Close the write end and drop it: its mapping goes now, not whenever the
        collector frees the gRPC call state that may still reach this object."""
        writer, self.writer = self.writer, None  # type: ignore[assignment]
        writer.close()


class Receiver:
    """One stream's receiving end, feeding ``feed``.

    Args:
        feed: the ring the values go to (the receiver closes it when the stream ends).
        name: the channel, for errors.
    """

    def __init__(self, feed: RingFeed, name: str, nslots: int):
        self._feed = feed
        self._name = name
        self._nslots = nslots
        # Credits go back in batches of half the ring, or at once when the writer may
        # have spent all it had: one message per value would double the stream's
        # traffic (and its thread wake-ups) for no gain. Likewise the credit thread
        # wakes on readers' releases only once a batch may be due (the intake has
        # written ``batch`` values past the last credit, and pokes it then): woken on
        # every release, it would take the GIL and a core from the reader that just
        # released, at the moment that reader goes on to its work (docs/transports.md).
        self._batch = max(1, nslots // 2)
        self._lock = threading.Lock()
        self._written = 0
        self._reported = 0  # the credit last sent: the writer may send below it + nslots
        self._outcome: tuple[bytes, str] | None = None
        self._serving = True  # until serve ends: a values call may attach meanwhile
        self._attached = False
        self._intake_done = threading.Event()

    def serve(self, context: Any) -> Iterator[bytes]:
        """The credits call's responses: credits, then how the stream ended. Once it has
        ended, waits (a few seconds at most) for the intake to end, then closes the
        ring's write end."""
        try:
            yield from self._credits(context)
        finally:
            self._end(wire.END_BROKEN, "the stream was cancelled")
            with self._lock:
                self._serving = False
                attached = self._attached
            # The intake ends once the writer ends its values call: at the end message
            # just sent, or when the connection fails (keepalives: a few seconds).
            if attached:
                self._intake_done.wait(POLL_S * 50)
            self._feed.close()

    def attach(self) -> bool:
        """Let one values call be the intake; False once the stream has ended (or another
        values call came first)."""
        with self._lock:
            if self._attached or not self._serving:
                return False
            self._attached = True
            return True

    def take(self, requests: Iterator[bytes]) -> None:
        """The intake: the values call's messages into the ring, until the writer's close
        or the call's end (run on the values call's thread, once :meth:`attach` said so)."""
        try:
            self._take(requests)
        finally:
            self._intake_done.set()

    def _end(self, kind: bytes, message: str) -> None:
        """Record how the stream ended (the first call wins) and tell the ring's readers."""
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = (kind, message)
        self._feed.end(broken=kind == wire.END_BROKEN)  # wakes the credit thread too

    def _take(self, requests: Iterator[bytes]) -> None:
        assembler = wire.Assembler(self._name)
        try:
            for msg in requests:
                if msg[:1] == wire.CLOSE:
                    self._end(wire.END_CLOSED, f"channel {self._name!r} was closed by its writer")
                    return
                value = assembler.add(msg)
                if value is not None:
                    self._feed.put(*value)
                    self._written += 1
                    ahead = self._written - self._reported
                    # A batch may now come due (the credit thread starts watching the
                    # releases), or the writer may be waiting for credit: send it now.
                    if ahead == self._batch or ahead >= self._nslots:
                        self._feed.poke()
            self._end(wire.END_BROKEN, f"channel {self._name!r}: the writer's stream ended without a close")
        except ChannelClosed:
            self._end(wire.END_CLOSED, f"channel {self._name!r} was closed by a reader")
        except ChannelError as e:
            self._end(wire.END_BROKEN, str(e))
        except Exception as e:  # grpc.RpcError: the writer went away or the call was cancelled
            self._end(wire.END_BROKEN, f"channel {self._name!r}: the stream from the writer failed: {e}")

    def _credits(self, context: Any) -> Iterator[bytes]:
        while self._outcome is None:
            expected = self._feed.word()  # before the checks: the intake's poke after them wakes us
            released = self._feed.released()
            owed = released - self._reported
            if owed >= self._batch or (owed > 0 and self._written >= self._reported + self._nslots):
                self._reported = released
                yield wire.credit(released)
                continue
            self._wait(released + 1, expected, self._written - self._reported >= self._batch)
            if not context.is_active():
                self._end(wire.END_BROKEN, f"channel {self._name!r}: the writer went away")
        kind, message = self._outcome
        yield wire.end(kind, message)

    def _wait(self, count: int, expected: int, on_release: bool) -> None:
        """Until the intake pokes, a slice passes, or (``on_release``) a reader releases
        value ``count - 1``."""
        try:
            self._feed.wait(count, expected, POLL_S, on_release=on_release)
        except ChannelClosed:
            self._end(wire.END_CLOSED, f"channel {self._name!r} was closed by a reader")
        except ChannelBroken as e:
            self._end(wire.END_BROKEN, str(e))


__all__ = ["Receiver", "RingFeed"]
