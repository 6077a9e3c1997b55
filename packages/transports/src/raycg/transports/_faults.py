"""Fault injection for the chaos suite: stall or corrupt a channel, on purpose.

Off by default and costless when off: nothing here runs unless the environment
variable ``RAYCG_FAULTS`` is set when ``raycg.transports`` is imported, and only then
are the ring's ``read``/``write`` methods wrapped (the hot path is untouched otherwise).

``RAYCG_FAULTS`` is a JSON list of faults, each::

    {"op": "read" | "write" | "stream",
                                 which end's call the fault hits; "stream": the
                                 values a gRPC channel sends (one stream per node)
     "channel": "a.work",        a substring of the channel's name ("" = any)
     "after": 5,                 let this many calls (values) through first
     "kind": "stall" | "corrupt" | "delay" | "drop" | "cut",
     "seconds": 2.0}             stall and delay: how long (a close still ends it)

A *stall* makes the call hang as a stuck peer would (the other end sees no progress,
then its timeout). A *corrupt* write publishes a slot record with a wrong sequence
number, as a scribbled header would look: the reader raises ChannelBroken.

On a gRPC stream: a *stall* holds value ``after`` (and so every later one) back for
``seconds``, as a congested network would; a *delay* holds back every value from
``after`` on, by ``seconds`` each; a *drop* loses value ``after``'s first message, which
the receiver notices (its readers and the writer raise ChannelBroken); a *cut* ends the
stream as a failed link would (ChannelBroken at both ends). The hook wraps the
stream's request iterator only when a "stream" fault is installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

ENV = "RAYCG_FAULTS"


@dataclasses.dataclass
class Fault:
    op: str
    channel: str = ""
    after: int = 0
    kind: str = "stall"
    seconds: float = 1.0
    seen: int = 0

    def hits(self, endpoint: Any, op: str) -> bool:
        name = endpoint.name if op == "stream" else endpoint.spec.name
        if op != self.op or self.channel not in name:
            return False
        self.seen += 1
        if self.kind == "delay":
            return self.seen > self.after
        return self.seen == self.after + 1


def _stall(endpoint: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        endpoint._check_closed()  # a closed channel ends the stall: nothing hangs
        time.sleep(0.01)


def install(faults: list[Fault]) -> None:
    """Wrap the ring's read and write (and a gRPC stream's sending) with ``faults``."""
    if any(f.op == "stream" for f in faults):
        _install_stream_faults([f for f in faults if f.op == "stream"])
    from ._shm_reader import ShmRingReader
    from ._shm_writer import ShmRingWriter

    reader_read = ShmRingReader.read
    writer_write = ShmRingWriter.write

    def read(self: Any, timeout_s: float | None = None, **kw: Any) -> object:
        for f in [f for f in faults if f.hits(self, "read")]:
            if f.kind == "stall":
                _stall(self, f.seconds)
        return reader_read(self, timeout_s, **kw)

    def write(self: Any, value: object, timeout_s: float | None = None, **kw: Any) -> None:
        fired = [f for f in faults if f.hits(self, "write")]
        for f in fired:
            if f.kind == "stall":
                _stall(self, f.seconds)
        if not any(f.kind == "corrupt" for f in fired):
            return writer_write(self, value, timeout_s, **kw)
        # Corrupt the slot record between filling it and publishing it, so that no
        # reader can have read it intact first (on the Python path, whose publish step
        # is a method we can wrap).
        publish = self._publish

        def corrupt_then_publish() -> None:
            _corrupt_record(self, self._core.seq)
            publish()

        self._publish = corrupt_then_publish
        try:
            self._write(value, timeout_s, kw.get("raise_if_pinned", False))
        finally:
            del self._publish

    ShmRingReader.read = read  # type: ignore[method-assign,assignment]
    ShmRingWriter.write = write  # type: ignore[method-assign]


def _corrupt_record(writer: Any, seq: int) -> None:
    from . import _shm_ring

    off = (writer._slots_off + _shm_ring._LINE * (seq % writer.spec.nslots)) // 8
    writer._ctrl.q[off] = seq + 7919  # a sequence number no reader expects


def _install_stream_faults(faults: list[Fault]) -> None:
    from . import _grpc_wire
    from ._grpc_stream import Stream

    outgoing = Stream._outgoing

    def faulty_outgoing(self: Any) -> Iterator[bytes]:
        for msg in outgoing(self):
            if msg[:1] == _grpc_wire.VALUE:
                fired = [f for f in faults if f.hits(self, "stream")]
                for f in fired:
                    if f.kind in ("stall", "delay"):
                        _sleep_unless_closing(self, f.seconds)
                    elif f.kind == "cut":
                        self.cut()
                        return
                if any(f.kind == "drop" for f in fired):
                    continue  # the value's first message: the rest arrive unexpected
            yield msg

    Stream._outgoing = faulty_outgoing  # type: ignore[method-assign]


def _sleep_unless_closing(stream: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stream._closing:
        time.sleep(0.01)


def install_from_env() -> None:
    raw = os.environ.get(ENV)
    if not raw:
        return
    try:
        faults = [Fault(**f) for f in json.loads(raw)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ENV} is not a JSON list of faults: {e}") from None
    install(faults)


__all__ = ["ENV", "Fault", "install", "install_from_env"]
