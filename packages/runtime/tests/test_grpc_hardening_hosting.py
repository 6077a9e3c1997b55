"""The runtime's gRPC addresses on an IPv6 node: the hosting server listens on the node's
address, bracketed, and the cause lookup reaches a raylet at an IPv6 address. No Ray:
``RAYCG_GRPC_HOST`` stands for the address Ray would report."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import raycg.transports as rt
from raycg.runtime import _hosting, _remote_death

pytestmark = pytest.mark.timeout(60)


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


@needs_ipv6
def test_the_hosting_server_listens_on_an_ipv6_node_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray reports an IPv6 node's address bare ("::1"); "::1:0" would not be listened on.
    monkeypatch.setenv(_hosting.LISTEN_HOST_ENV, "::1")
    server = _hosting.acquire_server()
    try:
        assert server.address.startswith("[::1]:")
        ring = rt.ShmRing(2, 1, slot_bytes=4096, name="v6")
        server.add_ring("edge", ring.spec)
        reader = ring.open_reader(0)
        writer = rt.GrpcWriter(rt.GrpcChannelSpec("v6", 2, (rt.GrpcTarget(server.address, "edge"),)))
        try:
            writer.write("over ipv6", 30)
            assert reader.read(30) == "over ipv6"
        finally:
            writer.close()
            reader.close()
            ring.close()
    finally:
        _hosting.release_server()


@needs_ipv6
def test_a_raylet_at_an_ipv6_address_is_asked() -> None:
    # Ray registers an IPv6 raylet's address bare: its gRPC target must be bracketed, or
    # the probe never reaches it and an alive node looks silent.
    with rt.GrpcServer("[::1]:0") as server:
        port = int(server.address.rsplit(":", 1)[1])
        assert _remote_death._raylet(("::1", port)) == "answers"


def test_an_actor_loads_grpcio_only_for_a_cross_node_graph() -> None:
    # What an actor imports at its first graph's setup is paid in every cold compile:
    # grpcio (~25 ms here, more on a cold cache) only with a cross-node edge or collective.
    code = (
        "import sys\n"
        "import raycg.runtime._actor, raycg.runtime._executor, raycg.runtime._hosting\n"
        "assert 'grpc' not in sys.modules, 'grpc is loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
