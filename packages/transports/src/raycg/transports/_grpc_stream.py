"""The sending end of one gRPC stream: a writer's values to one receiving node.

Sync grpcio (see docs/transports.md, "gRPC"). Two calls on one connection (why two:
_grpc_wire.py): the values call, whose request iterator is :meth:`Stream._outgoing`,
which gRPC's own thread drains from a queue; and the credits call, which a thread of
ours listens to. A value is sent only while the receiver's ring has a free slot for it
(``sent < released + nslots``), so at most ``nslots`` values are between this process
and the remote readers, whatever their speed.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import grpc

from . import _grpc_wire as wire
from ._deadline import remaining
from ._errors import ChannelBroken, ChannelClosed, ChannelError
from ._grpc_config import CLIENT_OPTIONS, METHOD_PATH, POLL_S, SEND_METHOD_PATH


@dataclasses.dataclass(frozen=True)
class GrpcTarget:
    """Where a channel's values go on one node: the server, and the ring's id there."""

    address: str
    channel_id: str


class Stream:
    """One stream to ``target``; its state is guarded by the writer's ``cond``.

    Raises:
        ChannelBroken: no connection to ``target.address`` within ``connect_timeout_s``.
    """

    def __init__(
        self, name: str, target: GrpcTarget, nslots: int, cond: threading.Condition, connect_timeout_s: float
    ):
        self.name = name
        self.target = target
        self.nslots = nslots
        self._cond = cond  # the writer's: one wait covers all its streams
        self.sent = 0  # values handed to gRPC
        self.released = 0  # values every reader of the remote ring released
        self.error: ChannelError | None = None
        self.done = False  # the listening thread has ended
        self._closing = False
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._channel = grpc.insecure_channel(target.address, options=CLIENT_OPTIONS)
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()
            self._channel.close()
            raise ChannelBroken(
                f"channel {name!r}: no connection to {target.address} within {connect_timeout_s:g} s "
                "(is the receiving node up, and its server listening there?)"
            ) from None
        self._credits = self._channel.unary_stream(METHOD_PATH)(wire.hello(target.channel_id, nslots))
        self._queue.put(wire.attach(target.channel_id))
        self._call = self._channel.stream_unary(SEND_METHOD_PATH).future(self._outgoing())
        self._thread = threading.Thread(target=self._listen, name=f"raycg-grpc-credits:{name}", daemon=True)
        self._thread.start()
        self._call.add_done_callback(self._values_done)

    def __repr__(self) -> str:
        return f"Stream({self.name!r} -> {self.target.address})"

    def has_room(self) -> bool:
        return self.sent < self.released + self.nslots

    def send(self, frames: list[bytes]) -> None:
        """Queue one value's messages (the caller checked :meth:`has_room`)."""
        for frame in frames:
            self._queue.put(frame)
        self.sent += 1

    def _outgoing(self) -> Iterator[bytes]:
        """The request stream, drained by gRPC's thread (the fault hook wraps it)."""
        while (msg := self._queue.get()) is not None:
            yield msg

    def cut(self) -> None:
        """End the stream at once, as a failed network would (the fault hook's cut)."""
        self._call.cancel()
        self._credits.cancel()

    def _values_done(self, call: grpc.Future) -> None:
        """The values call ended (on gRPC's thread). Normally the credits call says why
        first (its end message); if the values call failed on its own (refused, or the
        receiver found no stream of that name), end the credits call too, so that the
        listening thread, and the writer, learn it now."""
        if call.cancelled() or call.code() == grpc.StatusCode.OK:  # type: ignore[attr-defined]
            return
        with self._cond:
            if self.error is None and not self._closing:
                self.error = ChannelBroken(
                    f"channel {self.name!r}: the stream to {self.target.address} failed "
                    f"({call.code().name}: {call.details()})"  # type: ignore[attr-defined]
                )
                self._cond.notify_all()
        self._credits.cancel()

    def _listen(self) -> None:
        """The credits thread: reads the credits call until it ends, then records why.
        Whatever ends it (an exception of any kind included), the stream ends with it,
        as broken unless it was closed: never a dead thread and a writer left waiting."""
        error: ChannelError
        try:
            error = self._read_credits()
        except grpc.RpcError as e:
            if self._closing:
                error = ChannelClosed(f"channel {self.name!r} is closed")
            else:
                error = ChannelBroken(
                    f"channel {self.name!r}: the stream to {self.target.address} failed "
                    f"({e.code().name}: {e.details()})"  # type: ignore[attr-defined]
                )
        except Exception as e:  # a corrupt message, or a fault of ours: the stream is lost
            self._credits.cancel()  # the receiver learns it now, not at the writer's close
            error = ChannelBroken(
                f"channel {self.name!r}: the stream to {self.target.address} failed: its credits "
                f"could not be read ({type(e).__name__}: {e})"
            )
        finally:
            self._queue.put(None)  # ends the values call's requests, and gRPC's thread with it
        with self._cond:
            self.error = self.error or error
            self.done = True
            self._cond.notify_all()

    def _read_credits(self) -> ChannelError:
        """Take the credits call's messages until its end message; return how it ended."""
        for msg in self._credits:
            kind = msg[:1]
            if kind == wire.CREDIT:
                with self._cond:
                    self.released = max(self.released, wire.parse_credit(msg))
                    self._cond.notify_all()
            elif kind == wire.END:
                cls = ChannelClosed if msg[1:2] == wire.END_CLOSED else ChannelBroken
                return cls(msg[2:].decode("utf-8", "replace"))
            else:
                raise ValueError(f"a message of unknown kind {kind!r}")
        return ChannelBroken(f"channel {self.name!r}: the stream to {self.target.address} ended")

    def begin_close(self) -> None:
        """Tell the receiver to close its ring, without waiting (a writer tells all its
        streams first, so that a silent node does not take the others' time to close)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            if not self.done:
                self._queue.put(wire.CLOSE)
                self._queue.put(None)

    def close(self, deadline: float) -> None:
        """Tell the receiver to close its ring and wait for it until ``deadline`` (so
        that its readers see the close when this returns), then end the stream."""
        self.begin_close()
        with self._cond:
            self._cond.wait_for(lambda: self.done, remaining(deadline))
        self._call.cancel()
        self._credits.cancel()
        self._thread.join(POLL_S * 50)  # the cancel ends it at once
        self._channel.close()
