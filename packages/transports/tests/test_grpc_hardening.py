"""The gRPC channel's loose ends: IPv6 node addresses, a server's stop that never hangs,
and a credits stream that fails in a way gRPC does not report (an error, not a hang)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_testing import warm_up_grpc

import raycg.transports as rt
from raycg.transports import ChannelBroken
from raycg.transports import _grpc_wire as wire
from raycg.transports._address import join_host_port, split_host_port
from raycg.transports._grpc_config import METHOD, SEND_METHOD, SERVER_OPTIONS, SERVICE
from raycg.transports._grpc_receiver import Receiver

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _grpc_pollers() -> None:
    warm_up_grpc()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1 cannot be bound)"
)


# --- IPv6 addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [
        ("::1", 0, "[::1]:0"),
        ("fd00::2", 50051, "[fd00::2]:50051"),
        ("fe80::1%eth0", 7, "[fe80::1%eth0]:7"),  # a zone id stays inside the brackets
        ("[::1]", 5, "[::1]:5"),  # bracketed already: as it is
        ("127.0.0.1", 0, "127.0.0.1:0"),
        ("node-3.cluster", "80", "node-3.cluster:80"),
    ],
)
def test_join_host_port_brackets_an_ipv6_literal_only(host: str, port: int | str, address: str) -> None:
    assert join_host_port(host, port) == address


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("[::1]:0", ("::1", 0)),
        ("[fd00::2]:50051", ("fd00::2", 50051)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_split_host_port_undoes_join(address: str, parts: tuple[str, int]) -> None:
    assert split_host_port(address) == parts
    assert join_host_port(*parts) == address


@pytest.mark.parametrize("address", ["::1:0", "fd00::2:50051"])
def test_an_unbracketed_ipv6_address_is_refused_by_name(address: str) -> None:
    # gRPC would read its last group as the port (``::1:0`` binds [::0.1.0.0]:443).
    with pytest.raises(ValueError, match=re.escape(f"{address!r}: an IPv6 address needs brackets")):
        split_host_port(address)
    with pytest.raises(ValueError, match="needs brackets"):
        rt.GrpcServer(address)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "[::1]", "[::1", "host:", ":0", "h:http", "h:70000", "[]:0"]
)
def test_an_address_without_a_port_is_refused_by_name(address: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"address {address!r}: expected host:port")):
        split_host_port(address)


@needs_ipv6
def test_a_value_crosses_over_ipv6_loopback() -> None:
    ring = rt.ShmRing(2, 1, slot_bytes=4096, name="v6")
    with rt.GrpcServer(join_host_port("::1", 0)) as server:
        assert server.address.startswith("[::1]:")
        server.add_ring("edge", ring.spec)
        reader = ring.open_reader(0)
        writer = rt.GrpcWriter(rt.GrpcChannelSpec("v6", 2, (rt.GrpcTarget(server.address, "edge"),)))
        try:
            writer.write({"over": "ipv6"}, 30)
            writer.write(b"x" * (3 << 20), 30)  # several messages
            assert reader.read(30) == {"over": "ipv6"}
            assert reader.read(30) == b"x" * (3 << 20)
        finally:
            writer.close()
            reader.close()
            ring.close()


# --- a server's stop ----------------------------------------------------------------


def _call_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "raycg-grpc-stream"]


@pytest.mark.timeout(30)  # before the bound: stop waited for the stuck handler (60 s)
def test_stop_returns_with_a_handler_stuck_in_a_wait(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A values call whose handler waits for something that never comes (and does not
    # look at its call): stop returns within its bound, and leaves that thread behind.
    stuck, release = threading.Event(), threading.Event()

    def take_stuck(self: object, requests: object) -> None:
        stuck.set()
        release.wait(60)

    monkeypatch.setattr(Receiver, "take", take_stuck)
    ring = rt.ShmRing(2, 1, slot_bytes=4096, name="stuck")
    server = rt.GrpcServer("127.0.0.1:0")
    writer = None
    try:
        server.add_ring("edge", ring.spec)
        writer = rt.GrpcWriter(rt.GrpcChannelSpec("stuck", 2, (rt.GrpcTarget(server.address, "edge"),)))
        assert stuck.wait(20)
        with caplog.at_level(logging.WARNING, logger="raycg.transports._grpc_server"):
            server.stop(grace_s=0.1)
        left = _call_threads()
        assert left and all(t.daemon for t in left)  # abandoned: it never holds up the exit
        assert not release.is_set()
        assert "left to end on their own" in caplog.text and server.address in caplog.text
    finally:
        release.set()  # lets it end: the leak check joins it
        server.stop()
        if writer is not None:
            writer.close()
        ring.close()


def test_stop_waits_for_calls_that_end_and_refuses_new_ones() -> None:
    ring = rt.ShmRing(2, 1, slot_bytes=4096, name="calls")
    server = rt.GrpcServer("127.0.0.1:0")
    server.add_ring("edge", ring.spec)
    reader = ring.open_reader(0)
    writer = rt.GrpcWriter(rt.GrpcChannelSpec("calls", 2, (rt.GrpcTarget(server.address, "edge"),)))
    try:
        writer.write(1, 30)
        assert reader.read(30) == 1
        assert len(_call_threads()) == 2  # one per call of the stream
        server.stop(grace_s=0.1)
        assert _call_threads() == []  # the cancelled calls ended, and stop waited for them
        with pytest.raises(ChannelBroken):
            reader.read(30)
    finally:
        writer.close()
        reader.close()
        ring.close()


# --- a credits stream that cannot be read -------------------------------------------


@contextlib.contextmanager
def _fake_receiver(credits: bytes) -> Iterator[str]:
    """A server that speaks the stream's two calls, but answers the credits call with
    ``credits`` and then nothing (the call stays open until the writer ends it)."""

    def open_credits(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield credits
        deadline = time.monotonic() + 60
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)

    def take_values(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        for _ in requests:
            pass
        return b""

    pool = futures.ThreadPoolExecutor(4)
    server = grpc.server(pool, options=SERVER_OPTIONS)
    handlers = {
        METHOD: grpc.unary_stream_rpc_method_handler(open_credits),
        SEND_METHOD: grpc.stream_unary_rpc_method_handler(take_values),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait(30)
        pool.shutdown(wait=True)


@pytest.mark.timeout(30)  # before: the write waited for credit for its whole timeout (60 s)
@pytest.mark.parametrize("credits", [wire.CREDIT + b"\x01", b"?unknown"], ids=["truncated", "unknown-kind"])
def test_a_credits_message_that_cannot_be_read_breaks_the_stream(credits: bytes) -> None:
    # grpc raises no RpcError here: the message arrives, and only reading it fails. The
    # credits thread must end the stream as broken, not die and leave the writer waiting.
    with _fake_receiver(credits) as address:
        writer = rt.GrpcWriter(rt.GrpcChannelSpec("fake", 1, (rt.GrpcTarget(address, "edge"),)))
        try:
            with pytest.raises(ChannelBroken, match=f"channel 'fake': the stream to {address} failed"):
                for i in range(2):  # the second waits for a credit: one slot
                    writer.write(i, 60)
            with pytest.raises(ChannelBroken, match="its credits could not be read"):
                writer.write(2, 60)  # and so does every later one, at once
        finally:
            writer.close()


def test_the_servers_call_threads_are_joined_only_once_they_have_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # join() must wait for a call thread that is past its call but still running (stop()
    # says every call has ended when it returns): here each lingers 0.3 s after its call.
    from raycg.transports._grpc_server import _CallThreads

    run = _CallThreads._run

    def lingering(*args: object) -> None:
        run(*args)
        time.sleep(0.3)

    monkeypatch.setattr(_CallThreads, "_run", staticmethod(lingering))
    calls = _CallThreads("raycg-test-call")
    calls.submit(lambda: None).result(10)
    time.sleep(0.1)  # the call is over; its thread still runs (0.3 s)
    assert calls.join(10) == []
    assert not [t for t in threading.enumerate() if t.name == "raycg-test-call"]
