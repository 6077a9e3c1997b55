"""The cross-node channel's write end: one value, one stream per destination node.

A value is serialized once (the ring's serde) and its messages are made once; each
destination node gets them over its own stream, whatever its number of readers, and
its receiver writes them into a shared-memory ring there (_grpc_receiver.py), which
the readers of that node open as any ring: :class:`raycg.transports.ShmRingReader`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref

from . import _grpc_wire as wire
from . import _serde
from ._channel import Channel, wrong_end
from ._deadline import deadline_after, remaining
from ._errors import ChannelClosed, ChannelTimeout
from ._grpc_config import CLOSE_TIMEOUT_S, CONNECT_TIMEOUT_S, MAX_MESSAGE_BYTES, POLL_S
from ._grpc_stream import GrpcTarget, Stream


@dataclasses.dataclass(frozen=True)
class GrpcChannelSpec:
    """What a writer needs to open a cross-node channel: small, picklable, no Ray.

    Attributes:
        name: shown in errors.
        nslots: the slots of every destination ring (values in flight per node).
        targets: one per destination node.
    """

    name: str
    nslots: int
    targets: tuple[GrpcTarget, ...]


class GrpcWriter(Channel):
    """The write end of a channel whose readers run on other nodes.

    Args:
        spec: the channel; its rings must be registered at their servers (they may be
            registered a little later: a server waits for them).
        chunk_bytes: the largest message a value is cut into.
        connect_timeout_s: how long to wait for each destination's server.

    Raises:
        ValueError: the spec names no target, or the same target twice.
        ChannelBroken: a destination node cannot be reached.
    """

    def __init__(
        self,
        spec: GrpcChannelSpec,
        *,
        chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ):
        if not spec.targets:
            raise ValueError(f"channel {spec.name!r}: a gRPC channel needs at least one target")
        if len(set(spec.targets)) != len(spec.targets):
            raise ValueError(f"channel {spec.name!r}: a target is listed twice in {spec.targets}")
        if chunk_bytes < 64 or chunk_bytes > MAX_MESSAGE_BYTES // 2:
            raise ValueError(f"chunk_bytes must be in [64, {MAX_MESSAGE_BYTES // 2}], got {chunk_bytes}")
        if spec.nslots < 1:
            raise ValueError(f"channel {spec.name!r}: nslots must be >= 1, got {spec.nslots}")
        self.spec = spec
        self._chunk_bytes = chunk_bytes
        self._cond = threading.Condition()
        self._closed = False
        self._seq = 0
        self._streams: list[Stream] = []
        try:
            for target in spec.targets:
                self._streams.append(Stream(spec.name, target, spec.nslots, self._cond, connect_timeout_s))
        except BaseException:
            _close_streams(self._streams)
            raise
        # Dropped without a close (a crashed executor, a test): end the streams all the
        # same, so no thread or connection outlives the writer.
        self._finalizer = weakref.finalize(self, _close_streams, list(self._streams))

    def __repr__(self) -> str:
        return f"GrpcWriter({self.spec.name!r})"

    def read(self, timeout_s: float | None = None) -> object:
        raise wrong_end(self, "read")

    def write(self, value: object, timeout_s: float | None = None) -> None:
        """Send ``value`` to every destination node, once each.

        Raises:
            ValueNotSerializable: nothing was sent; the channel stays usable.
            ChannelTimeout: a destination ring stayed full (its readers are behind).
            ChannelClosed, ChannelBroken: as for every channel.
        """
        deadline = deadline_after(timeout_s)
        meta, raws = _serde.encode(value)  # before waiting: errors leave the channel intact
        if not raws and len(meta) <= self._chunk_bytes // 2:
            # A small value is one message, made in a moment: one turn of the lock.
            # (Channels have one writing thread: the seq is ours until we send.)
            frames = [wire.single_frame(self._seq, meta)]
            with self._cond:
                self._wait_room(deadline)
                self._send(frames)
            return
        with self._cond:
            self._wait_room(deadline)
        # Every stream has room, and keeps it (only our sends take it): copy the value
        # into messages without holding the lock the credit threads need.
        frames = wire.frames(self._seq, meta, raws, self._chunk_bytes)
        with self._cond:
            self._raise_if_ended()
            self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        for stream in self._streams:  # to all, or (on an error before) to none
            stream.send(frames)
        self._seq += 1

    def _wait_room(self, deadline: float) -> None:
        while True:
            self._raise_if_ended()
            full = [s for s in self._streams if not s.has_room()]
            if not full:
                return
            left = remaining(deadline)
            if left <= 0:
                raise ChannelTimeout(
                    f"channel {self.spec.name!r}: timed out waiting for a free slot in the ring at "
                    f"{full[0].target.address} (all {self.spec.nslots} hold values not yet read by "
                    "every reader there)"
                )
            # Sliced although every change notifies: no wait of ours is unbounded.
            self._cond.wait(min(left, POLL_S * 10) if left != math.inf else POLL_S * 10)

    def _raise_if_ended(self) -> None:
        if self._closed:
            raise ChannelClosed(f"channel {self.spec.name!r} is closed")
        for stream in self._streams:
            if stream.error is not None:
                # A fresh exception, not the stored one: raised, the stored one would keep
                # the raising frames in its traceback, and they reach this writer (a cycle
                # that holds the caller's channels, and their mappings, until a collection).
                raise type(stream.error)(*stream.error.args)

    def close(self) -> None:
        """Close the channel on every node: wakes a blocked write at once; returns
        once the remote rings are closed, or after about CLOSE_TIMEOUT_S."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._finalizer.detach()
        _close_streams(self._streams)


def _close_streams(streams: list[Stream]) -> None:
    deadline = deadline_after(CLOSE_TIMEOUT_S)
    for stream in streams:  # every node told first: the waits below overlap
        stream.begin_close()
    for stream in streams:
        stream.close(deadline)


__all__ = ["GrpcChannelSpec", "GrpcTarget", "GrpcWriter"]
