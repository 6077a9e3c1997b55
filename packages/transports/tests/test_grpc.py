"""The gRPC channel across processes, over loopback: large values, order, flow control,
fan-out to nodes, and every failure it must turn into an error rather than a hang.

A receiving node is a child process (grpc_testing.Node); the writer is this process,
or a child (RemoteWriter) where it must be killed or given faults through RAYCG_FAULTS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from grpc_testing import Node, RemoteWriter, warm_up_grpc
from transports_testing import Call, big_array, digest

import raycg.transports as rt
from raycg.transports import ChannelBroken, ChannelClosed, ChannelTimeout, ValueNotSerializable

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _grpc_pollers() -> None:
    warm_up_grpc()


def spec(*nodes: Node, nslots: int = 2) -> rt.GrpcChannelSpec:
    return rt.GrpcChannelSpec("edge", nslots, tuple(n.target for n in nodes))


def faults(monkeypatch: pytest.MonkeyPatch, **fault: object) -> None:
    """Inject ``fault`` into the streams of writers spawned from now on."""
    monkeypatch.setenv("RAYCG_FAULTS", json.dumps([{"op": "stream", "channel": "edge", **fault}]))


# --- values -------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [50_000_000, 64 << 20])
def test_values_far_past_grpcs_message_limit_cross_whole(nbytes: int) -> None:
    with Node(nslots=2) as node, rt.GrpcWriter(spec(node)) as writer:
        value = big_array(nbytes, seed=nbytes)
        writer.write(value)
        assert node.call("digest", 0) == digest(value)


def test_a_large_pickle_stream_crosses_whole() -> None:
    # No out-of-band buffer: the pickle stream itself is cut into messages.
    value = {"blob": os.urandom(9 << 20), "text": "é" * 1000}
    with Node(nslots=2) as node, rt.GrpcWriter(spec(node)) as writer:
        writer.write(value)
        assert node.call("read", 0) == value


def test_values_of_every_size_arrive_in_submission_order() -> None:
    values = [i if i % 3 else big_array(3 << 20, seed=i) for i in range(24)]
    with Node(nslots=3) as node, rt.GrpcWriter(spec(node, nslots=3)) as writer:
        reading = Call(lambda: [node.call("digest", 0) for _ in values])
        for v in values:
            writer.write(v)
        assert reading.outcome() == [digest(v) for v in values]


def test_readers_on_the_receiving_node_read_zero_copy() -> None:
    with Node(nslots=2) as node, rt.GrpcWriter(spec(node)) as writer:
        writer.write(big_array(1 << 20))
        node.call("hold", 0)
        assert node.call("zero_copy", 0)  # the array points into the node's ring
        node.call("drop")


def test_a_value_is_sent_once_per_node_whatever_its_readers() -> None:
    with (
        Node(nslots=2, nreaders=3) as a,
        Node(nslots=2, nreaders=1) as b,
        rt.GrpcWriter(spec(a, b)) as writer,
    ):
        for i in range(5):
            writer.write(np.full(1000, i))
            assert [a.call("digest", r) for r in range(3)] == [digest(np.full(1000, i))] * 3
            assert b.call("digest", 0) == digest(np.full(1000, i))
        assert [s.sent for s in writer._streams] == [5, 5]  # one stream, one copy, per node


def test_an_unserializable_value_leaves_the_channel_usable() -> None:
    with Node(nslots=2) as node, rt.GrpcWriter(spec(node)) as writer:
        with pytest.raises(ValueNotSerializable, match="lock"):
            writer.write(threading.Lock())
        writer.write("after")
        assert node.call("read", 0) == "after"


# --- flow control -------------------------------------------------------------------


def test_a_slow_reader_holds_the_writer_back() -> None:
    with Node(nslots=2) as node, rt.GrpcWriter(spec(node)) as writer:
        writer.write(big_array(8 << 20, seed=1))
        writer.write(big_array(8 << 20, seed=2))
        with pytest.raises(ChannelTimeout, match=r"free slot in the ring at 127.0.0.1"):
            writer.write(big_array(8 << 20, seed=3), timeout_s=0.5)
        (stream,) = writer._streams
        assert stream.sent - stream.released <= 2  # nothing more is queued anywhere
        blocked = Call(lambda: writer.write("third"))
        assert node.call("digest", 0) == digest(big_array(8 << 20, seed=1))
        blocked.outcome()  # the read freed a slot over there: the write went through
        assert node.call("digest", 0) == digest(big_array(8 << 20, seed=2))
        assert node.call("read", 0) == "third"


def test_a_value_held_zero_copy_keeps_its_slot() -> None:
    with Node(nslots=1) as node, rt.GrpcWriter(spec(node, nslots=1)) as writer:
        writer.write(big_array(1 << 20))
        node.call("hold", 0)
        with pytest.raises(ChannelTimeout):
            writer.write("next", timeout_s=0.5)
        node.call("drop")
        writer.write("next", timeout_s=10)
        assert node.call("read", 0) == "next"


# --- faults -------------------------------------------------------------------------


def test_a_stall_times_out_then_the_channel_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    faults(monkeypatch, after=1, kind="stall", seconds=2.0)
    with Node(nslots=4) as node, RemoteWriter(spec(node, nslots=4)) as writer:
        writer.call("write_many", [0, 1, 2])
        assert node.call("read", 0) == 0
        with pytest.raises(ChannelTimeout):
            node.call("read", 0, 0.3)  # value 1 is held up in the network
        assert node.call("read", 0, 30) == 1  # the stall ended: nothing was lost
        assert node.call("read", 0, 30) == 2
        writer.call("write", 3)
        assert node.call("read", 0, 30) == 3


def test_a_stalled_stream_times_the_writer_out_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    faults(monkeypatch, after=0, kind="stall", seconds=2.0)
    with Node(nslots=1) as node, RemoteWriter(spec(node, nslots=1)) as writer:
        writer.call("write", "a")
        with pytest.raises(ChannelTimeout):  # "a" has not arrived, so its slot is not free
            writer.call("write", "b", 0.3)
        assert node.call("read", 0, 30) == "a"
        writer.call("write", "b", 30)
        assert node.call("read", 0, 30) == "b"


def test_delayed_values_arrive_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    faults(monkeypatch, after=2, kind="delay", seconds=0.05)
    with Node(nslots=4) as node, RemoteWriter(spec(node, nslots=4)) as writer:
        writer.send("write_many", list(range(10)))
        assert node.call("read_many", 0, 10) == list(range(10))
        writer.recv()


@pytest.mark.parametrize("kind", ["drop", "cut"])
def test_a_lost_message_or_a_cut_breaks_both_ends(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    faults(monkeypatch, after=1, kind=kind)
    with Node(nslots=4) as node, RemoteWriter(spec(node, nslots=4)) as writer:
        writer.call("write", 0)
        assert node.call("read", 0, 30) == 0  # the stream is up
        writer.call("write_many", [1, 2])
        with pytest.raises(ChannelBroken, match="broken"):
            node.call("read", 0, 30)  # no value after the fault, and none out of order
        with pytest.raises(ChannelBroken, match=r"lost|failed|cancel|ended"):
            for _ in range(100):  # the writer learns it from the stream: soon, not at once
                writer.call("write", "more", 30)


def test_faults_are_off_by_default() -> None:
    from raycg.transports._grpc_stream import Stream

    assert Stream._outgoing.__qualname__ == "Stream._outgoing"


# --- peers that fail ----------------------------------------------------------------


def test_a_killed_receiving_node_breaks_a_blocked_writer() -> None:
    with Node(nslots=1) as node, rt.GrpcWriter(spec(node, nslots=1)) as writer:
        writer.write("fills the ring")
        blocked = Call(lambda: writer.write("waits")).wait_blocked()
        node.kill()
        with pytest.raises(ChannelBroken, match=r"stream to 127.0.0.1.*failed"):
            blocked.outcome()
        with pytest.raises(ChannelBroken):
            writer.write("after", timeout_s=0)


def test_a_killed_writer_breaks_the_readers() -> None:
    with Node(nslots=2, nreaders=2) as node, RemoteWriter(spec(node)) as writer:
        writer.call("write", "v0")
        assert node.call("read", 0, 30) == "v0"
        node.send("read", 0)  # blocked on the next value
        writer.kill()
        with pytest.raises(ChannelBroken, match="broken"):
            node.recv()
        with pytest.raises(ChannelBroken):  # every reader, even with a value unread
            node.call("read", 1, 0)


def test_a_vanished_node_is_detected_by_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stopped process answers nothing, not even TCP resets: only the keepalive pings
    # going unanswered for the silence window tell the writer (a child, spawned with a
    # window of 2 s instead of Ray's node-death window).
    monkeypatch.setenv("RAYCG_GRPC_SILENCE_S", "2")
    with Node(nslots=1) as node, RemoteWriter(spec(node, nslots=1)) as writer:
        writer.call("write", "fills the ring")
        writer.send("write", "waits")
        os.kill(node.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ChannelBroken, match=r"UNAVAILABLE|failed"):
                writer.recv()
        finally:
            os.kill(node.pid, signal.SIGCONT)


def test_a_node_stopped_within_the_silence_window_is_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopped for 3.5 s (longer than a ping and the 2 s a ping once had), inside the
    # writer's 8 s window: the writer fills the ring and times out while the node is
    # stopped, nothing breaks, and every value arrives, in order, once it runs again.
    monkeypatch.setenv("RAYCG_GRPC_SILENCE_S", "8")
    with Node(nslots=4) as node, RemoteWriter(spec(node, nslots=4)) as writer:
        os.kill(node.pid, signal.SIGSTOP)
        try:
            writer.call("write_many", ["v0", "v1", "v2", "v3"], 30)  # the ring's 4 slots
            with pytest.raises(ChannelTimeout):  # full until the node reads
                writer.call("write", "v4", 3.5)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        assert node.call("read_many", 0, 4) == ["v0", "v1", "v2", "v3"]
        writer.call("write", "v4", 30)
        assert node.call("read", 0, 30) == "v4"


@pytest.mark.parametrize(
    ("env", "window_s"),
    [
        ({}, 68.0),  # Ray's defaults: 5 checks of 10 s, 3 s apart, and a period of margin
        (
            {
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "5",
            },
            11.0,
        ),
        ({"RAY_health_check_period_ms": "1000", "RAYCG_GRPC_SILENCE_S": "2.5"}, 2.5),
    ],
)
def test_the_silence_window_is_rays_node_death_window(env: dict[str, str], window_s: float) -> None:
    from raycg.transports._grpc_config import silence_s

    assert silence_s(env) == window_s


@pytest.mark.parametrize("name", ["RAYCG_GRPC_SILENCE_S", "RAY_health_check_timeout_ms"])
def test_a_bad_silence_setting_is_refused_by_name(name: str) -> None:
    from raycg.transports._grpc_config import silence_s

    with pytest.raises(ValueError, match=name):
        silence_s({name: "soon"})


@pytest.mark.parametrize(
    "env",
    [
        {"RAYCG_GRPC_SILENCE_S": "inf"},
        {"RAYCG_GRPC_SILENCE_S": "1e7"},  # past what gRPC's millisecond ints hold
        {"RAY_health_check_failure_threshold": "1000000"},  # a Ray that never gives up
    ],
)
def test_an_extreme_silence_window_still_makes_streams(env: dict[str, str]) -> None:
    # In a fresh process: the window is read once, at import.
    code = (
        "import raycg.transports as rt; s = rt.GrpcServer('127.0.0.1:0'); "
        "r = rt.ShmRing(1, 1, name='w'); s.add_ring('w', r.spec); rd = r.open_reader(0); "
        "w = rt.GrpcWriter(rt.GrpcChannelSpec('w', 1, (rt.GrpcTarget(s.address, 'w'),))); "
        "w.write(7); assert rd.read(timeout_s=30) == 7; w.close(); rd.close(); s.stop(); r.close()"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_health_check", "RAYCG_GRPC"))}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]


# --- close ----------------------------------------------------------------------------


def test_close_wakes_a_blocked_writer_and_closes_the_remote_ring() -> None:
    with Node(nslots=1, nreaders=2) as node:
        writer = rt.GrpcWriter(spec(node, nslots=1))
        writer.write("v0")
        blocked = Call(lambda: writer.write("v1")).wait_blocked()
        writer.close()
        with pytest.raises(ChannelClosed):
            blocked.outcome()
        with pytest.raises(ChannelClosed):  # the remote ring is closed once close returned
            node.call("read", 0, 0)
        writer.close()  # idempotent


def test_close_reaches_every_node_even_with_one_silent() -> None:
    # The close goes to every node at once: a stopped node that never answers takes the
    # whole close timeout, and the others must not lose their share of it (their rings
    # would be cut, and their readers see ChannelBroken instead of the close).
    with Node(nslots=2) as silent, Node(nslots=2) as node:
        writer = rt.GrpcWriter(spec(silent, node))
        writer.write("v0")
        assert node.call("read", 0, 30) == "v0"
        os.kill(silent.pid, signal.SIGSTOP)
        try:
            writer.close()
            with pytest.raises(ChannelClosed):
                node.call("read", 0, 30)
        finally:
            os.kill(silent.pid, signal.SIGCONT)


def test_a_reader_closing_closes_the_writer() -> None:
    with Node(nslots=1) as node, rt.GrpcWriter(spec(node, nslots=1)) as writer:
        writer.write("v0")
        blocked = Call(lambda: writer.write("v1")).wait_blocked()
        node.call("close_reader", 0)
        with pytest.raises(ChannelClosed, match="closed by a reader"):
            blocked.outcome()


def test_a_stopped_server_breaks_its_streams() -> None:
    ring = rt.ShmRing(2, 1, name="stopped")
    server = rt.GrpcServer("127.0.0.1:0")
    server.add_ring("edge", ring.spec)
    reader = ring.open_reader(0)
    try:
        with rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, (rt.GrpcTarget(server.address, "edge"),))) as w:
            w.write(1)
            assert reader.read(timeout_s=30) == 1
            server.stop()
            with pytest.raises(ChannelBroken):
                reader.read(timeout_s=30)
            with pytest.raises(ChannelBroken):
                for _ in range(100):
                    w.write(2, timeout_s=30)
            server.stop()  # idempotent
    finally:
        reader.close()
        ring.close()


# --- setup errors -----------------------------------------------------------------------


def test_an_unreachable_node_is_a_clear_error() -> None:
    with rt.GrpcServer("127.0.0.1:0") as server:
        address = server.address  # a port nobody listens on once the server stopped
    with pytest.raises(ChannelBroken, match=f"no connection to {address}"):
        rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, (rt.GrpcTarget(address, "edge"),)), connect_timeout_s=0.5)


def test_a_stream_goes_straight_to_its_node_never_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # gRPC sends a channel through the proxy http_proxy names unless told not to: the
    # values would go to an address that is not the node's (and stall there).
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(4)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("grpc_proxy", raising=False)
        ring = rt.ShmRing(2, 1, name="direct")
        reader = ring.open_reader(0)
        try:
            with rt.GrpcServer("127.0.0.1:0") as server:
                server.add_ring("edge", ring.spec)
                target = rt.GrpcTarget(server.address, "edge")
                with rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, (target,)), connect_timeout_s=5) as w:
                    w.write("direct")
                    assert reader.read(timeout_s=30) == "direct"
        finally:
            reader.close()
            ring.close()
        proxy.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody ever connected to the proxy
            proxy.accept()


def test_a_ring_never_registered_is_refused() -> None:
    with rt.GrpcServer("127.0.0.1:0", register_timeout_s=0.2) as server:
        target = rt.GrpcTarget(server.address, "nobody")
        with (
            rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, (target,))) as writer,
            pytest.raises(ChannelBroken, match="no ring is registered as 'nobody'"),
        ):
            for _ in range(100):
                writer.write(0, timeout_s=30)


def test_a_slot_count_mismatch_is_refused() -> None:
    ring = rt.ShmRing(3, 1, name="mismatch")
    try:
        with rt.GrpcServer("127.0.0.1:0") as server:
            server.add_ring("edge", ring.spec)
            with pytest.raises(ValueError, match="registered as 'edge' already"):
                server.add_ring("edge", ring.spec)
            target = rt.GrpcTarget(server.address, "edge")
            with (
                rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, (target,))) as writer,
                pytest.raises(ChannelBroken, match=r"expects 2 slots.*has 3"),
            ):
                for _ in range(100):
                    writer.write(0, timeout_s=30)
    finally:
        ring.close()


def test_bad_specs_name_the_channel() -> None:
    with pytest.raises(ValueError, match="'edge': a gRPC channel needs at least one target"):
        rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, ()))
    t = rt.GrpcTarget("127.0.0.1:1", "x")
    with pytest.raises(ValueError, match="listed twice"):
        rt.GrpcWriter(rt.GrpcChannelSpec("edge", 2, (t, t)))
    with pytest.raises(ValueError, match="nslots"):
        rt.GrpcWriter(rt.GrpcChannelSpec("edge", 0, (t,)))


def test_a_port_in_use_is_a_clear_error() -> None:
    with (
        rt.GrpcServer("127.0.0.1:0") as server,
        pytest.raises(OSError, match=f"cannot listen on '{server.address}'"),
    ):
        rt.GrpcServer(server.address)
