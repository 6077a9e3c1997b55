"""The Channel conformance suite: every implementation, the same behaviour.

Endpoints live in one process and blocked calls run on threads, so one suite covers
the in-process ring too; test_shm_ring.py runs the shared-memory ring across processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import numpy as np
import pytest
from transports_testing import Call

import raycg.transports as rt
from raycg.transports import ChannelClosed, ChannelError, ChannelTimeout, InprocRing, ShmRing

Pair = tuple[rt.Channel, list[rt.Channel]]


@contextlib.contextmanager
def shm_pair(nslots: int, nreaders: int) -> Iterator[Pair]:
    ring = ShmRing(nslots, nreaders, slot_bytes=4096, name="conformance")
    # A liveness slice far longer than the test's timeout: only a futex wake-up can end
    # a wait, so a lost wake-up shows up as a hang rather than as latency.
    writer = ring.open_writer(liveness_interval_s=600)
    readers = [ring.open_reader(i, liveness_interval_s=600) for i in range(nreaders)]
    try:
        yield writer, readers
    finally:
        for ep in (writer, *readers):
            ep.close()
        ring.close()


@contextlib.contextmanager
def inproc_pair(nslots: int, nreaders: int) -> Iterator[Pair]:
    ring = InprocRing(nslots, nreaders, name="conformance")
    writer = ring.writer()
    try:
        yield writer, [ring.reader(i) for i in range(nreaders)]
    finally:
        ring.close()


@contextlib.contextmanager
def grpc_pair(nslots: int, nreaders: int) -> Iterator[Pair]:
    # The cross-node channel with both nodes in this process, over loopback: a gRPC
    # writer, and the readers of the ring its receiver feeds.
    ring = ShmRing(nslots, nreaders, slot_bytes=4096, name="conformance")
    server = rt.GrpcServer("127.0.0.1:0")
    try:
        server.add_ring("conformance", ring.spec)
        writer = rt.GrpcWriter(
            rt.GrpcChannelSpec("conformance", nslots, (rt.GrpcTarget(server.address, "conformance"),))
        )
        readers = [ring.open_reader(i, liveness_interval_s=600) for i in range(nreaders)]
        try:
            yield writer, readers
        finally:
            for ep in (writer, *readers):
                ep.close()
    finally:
        server.stop()
        ring.close()


# A value a network channel's write accepted reaches its readers a moment later, not
# at once: a read right after a write waits this long for it, where the suite's other
# channels do not wait at all.
grpc_pair.delivery_s = 10  # type: ignore[attr-defined]

MakePair = Callable[[int, int], AbstractContextManager[Pair]]
ALL_CHANNELS = [
    pytest.param(shm_pair, id="shm"),
    pytest.param(inproc_pair, id="inproc"),
    pytest.param(grpc_pair, id="grpc"),
]
VALUES = [0, "one", {"two": [2, 2.0]}, None, (3, b"three"), np.arange(4), 2**70, -5.5]

conformance = pytest.mark.parametrize("make_pair", ALL_CHANNELS)
pytestmark = pytest.mark.timeout(30)


def same(a: object, b: object) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else a == b


@conformance
def test_values_arrive_in_order(make_pair: MakePair) -> None:
    with make_pair(2, 1) as (writer, (reader,)):
        # More values than slots: the writer blocks on a full ring and resumes.
        feeder = Call(lambda: [writer.write(v) for v in VALUES * 3])
        got = [reader.read() for _ in VALUES * 3]
        feeder.outcome()
    assert all(same(g, v) for g, v in zip(got, VALUES * 3))


@conformance
def test_every_reader_gets_every_value(make_pair: MakePair) -> None:
    with make_pair(3, 3) as (writer, readers):
        calls = [Call(lambda r=r: [r.read() for _ in range(20)]) for r in readers]
        for v in range(20):
            writer.write(v)
        assert [c.outcome() for c in calls] == [list(range(20))] * 3


@conformance
def test_ring_holds_nslots_unread_values(make_pair: MakePair) -> None:
    with make_pair(3, 2) as (writer, (r0, r1)):
        for v in range(3):
            writer.write(v, timeout_s=0)  # N slots take N values without waiting
        with pytest.raises(ChannelTimeout):
            writer.write(3, timeout_s=0)
        assert r0.read() == 0
        with pytest.raises(ChannelTimeout):  # reader 1 still holds value 0's slot
            writer.write(3, timeout_s=0)
        blocked = Call(lambda: writer.write(3)).wait_blocked()
        assert r1.read() == 0  # the last reader releases the oldest slot...
        blocked.outcome()  # ...and the writer completes
        assert [r0.read() for _ in range(3)] == [1, 2, 3]
        assert [r1.read() for _ in range(3)] == [1, 2, 3]


@conformance
@pytest.mark.parametrize("closer", ["writer", "reader0", "reader1"])
def test_close_wakes_blocked_reader_and_writer(make_pair: MakePair, closer: str) -> None:
    with make_pair(1, 2) as (writer, (r0, r1)):
        writer.write("v0")
        assert r0.read() == "v0"
        reading = Call(r0.read).wait_blocked()  # nothing new to read
        writing = Call(lambda: writer.write("v1")).wait_blocked()  # r1 holds the one slot
        {"writer": writer, "reader0": r0, "reader1": r1}[closer].close()
        with pytest.raises(ChannelClosed):
            reading.outcome()
        with pytest.raises(ChannelClosed):
            writing.outcome()
        # Closed for good, for every endpoint, even with a value still unread.
        with pytest.raises(ChannelClosed):
            r1.read(timeout_s=0)
        with pytest.raises(ChannelClosed):
            writer.write("v2", timeout_s=0)


@conformance
def test_close_is_idempotent(make_pair: MakePair) -> None:
    with make_pair(2, 1) as (writer, (reader,)):
        for ep in (writer, reader, writer, reader):
            ep.close()
        with pytest.raises(ChannelClosed):
            reader.read(timeout_s=0)
        with pytest.raises(ChannelClosed):
            writer.write(1)


@conformance
def test_endpoint_is_a_context_manager(make_pair: MakePair) -> None:
    with make_pair(2, 1) as (writer, (reader,)):
        with writer:
            writer.write(1)
        with pytest.raises(ChannelClosed):
            reader.read()


@conformance
@pytest.mark.parametrize("timeout_s", [0, 0.05])
def test_timeout_leaves_channel_usable(make_pair: MakePair, timeout_s: float) -> None:
    with make_pair(1, 1) as (writer, (reader,)):
        with pytest.raises(ChannelTimeout) as err:
            reader.read(timeout_s=timeout_s)
        assert isinstance(err.value, TimeoutError)
        delivery_s = getattr(make_pair, "delivery_s", 0)
        writer.write("a", timeout_s=timeout_s)
        with pytest.raises(TimeoutError):
            writer.write("b", timeout_s=timeout_s)
        assert reader.read(timeout_s=timeout_s + delivery_s) == "a"
        # The slot "a" held is free once it is read (over a network: a moment later).
        writer.write("b", timeout_s=timeout_s + delivery_s)
        assert reader.read(timeout_s=timeout_s + delivery_s) == "b"


@conformance
def test_wrong_end_raises_type_error(make_pair: MakePair) -> None:
    with make_pair(1, 1) as (writer, (reader,)):
        with pytest.raises(TypeError, match="other end"):
            writer.read()
        with pytest.raises(TypeError, match="other end"):
            reader.write(1)
        writer.write(1)  # a wrong-end call changes nothing
        assert reader.read() == 1


def test_error_classes() -> None:
    # Closed is not broken; a timeout (and so a pinned slot) is a TimeoutError; a value
    # that cannot be serialized is a TypeError. Every one is a ChannelError.
    assert not issubclass(rt.ChannelClosed, rt.ChannelBroken)
    assert not issubclass(rt.ChannelBroken, rt.ChannelClosed)
    assert issubclass(rt.ChannelTimeout, TimeoutError)
    assert issubclass(rt.SlotPinned, rt.ChannelTimeout)
    assert issubclass(rt.ValueNotSerializable, TypeError)
    for cls in (
        rt.ChannelClosed,
        rt.ChannelBroken,
        rt.ChannelTimeout,
        rt.SlotPinned,
        rt.ValueNotSerializable,
    ):
        assert issubclass(cls, ChannelError)
    for cls in (rt.ShmRingWriter, rt.ShmRingReader, rt.InprocWriter, rt.InprocReader, rt.GrpcWriter):
        assert issubclass(cls, rt.Channel)


def test_exports_exist() -> None:
    assert all(hasattr(rt, name) for name in rt.__all__)
