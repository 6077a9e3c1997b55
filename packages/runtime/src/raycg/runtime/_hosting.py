"""Rings made by a process of this node for a graph whose caller runs elsewhere: a GRPC
channel's ring on each of its reader nodes (made by a reader actor there, or the
caller: actor side; the caller uses it too), and the ring of an SHM channel among the
actors of a node that is not the caller's (made by its writer actor; it is served too,
though no stream comes: one code path).

A GRPC channel's writer sends each value once per reader node; on that node it lands in a
shared-memory ring that its readers open as any ring. The ring is made by a process of
that node (memfds are reached through /proc/<pid>/fd, on the node only), which also runs
the node's gRPC server: one per process, listening on the node's own address as Ray
reports it, on a free port, while the process hosts rings for some graph (started by the
first, stopped after the last one's teardown, or after its executor here ended on its own,
as it does when the caller dies: nothing outlives the graphs). ``RAYCG_GRPC_HOST``
overrides the address (tests run every node of a cluster on one machine, on loopback).

A cross-node CPU collective's part of a node (its segment and the rings its node leader
reads, :class:`raycg.transports.CpuNetNode`) is hosted the same way, by that leader
(:func:`host_comm_part`), and freed with the graph's rings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raycg.proto import ChannelPlan, Plan, RingHostReply, RingHostRequest, ShmEndpoint, Transport
from raycg.transports import ShmRing, join_host_port

if TYPE_CHECKING:  # grpcio loads with them: in a process that hosts a cross-node edge only
    from raycg.transports import CpuNetNode, GrpcServer, NetNodeSpec

LISTEN_HOST_ENV = "RAYCG_GRPC_HOST"
_server: GrpcServer | None = None
_users = 0  # graphs this process hosts rings for: the server runs while there are some
_lock = threading.Lock()
# graph id -> the rings (stream id, ring) and communicator parts this process hosts
# for it, until its teardown.
_hosted: dict[str, list[tuple[str, ShmRing] | CpuNetNode]] = {}


def stream_id(graph_id: str, channel_id: str) -> str:
    """The name a channel's ring has at its node's server: unique across graphs."""
    return f"{graph_id}/{channel_id}"


def acquire_server() -> GrpcServer:
    """This process's gRPC server for one more graph (started by the first)."""
    global _server, _users
    with _lock:
        if _server is None:
            import ray

            from raycg.transports import GrpcServer

            host = os.environ.get(LISTEN_HOST_ENV) or ray.util.get_node_ip_address()
            _server = GrpcServer(join_host_port(host, 0))  # an IPv6 node's address bracketed
        _users += 1
        return _server


def release_server() -> None:
    """One graph less; the last one stops the server (its streams ended with their rings)."""
    global _server, _users
    with _lock:
        _users -= 1
        server = _server if _users == 0 else None
        if server is not None:
            _server = None
    if server is not None:
        server.stop(grace_s=0.5)


def is_remote_shm(plan: Plan, ch: ChannelPlan) -> bool:
    """An SHM channel among actors of a node that is not the caller's: its ring must be
    made there (memfds are reached through /proc/<pid>/fd, on their own node only)."""
    if ch.transport != Transport.SHM or ch.writer.WhichOneof("kind") == "driver":
        return False
    node = next((a.node_id for a in plan.actors if a.actor_id == ch.writer.actor_id), "")
    return bool(node) and bool(plan.driver_node_id) and node != plan.driver_node_id


def make_ring(ch: ChannelPlan, nreaders: int) -> ShmRing:
    """The ring of GRPC channel ``ch`` on one of its reader nodes."""
    return ShmRing(ch.num_slots, nreaders, ch.slot_size_bytes or 1 << 20, name=ch.label or ch.channel_id)


def host_rings(instance: object, request_bytes: bytes) -> bytes:
    """Runs on the host (through ``__ray_call__``, or in the caller): make the rings a
    ``RingHostRequest`` asks for and serve them; return a ``RingHostReply``."""
    req = RingHostRequest.FromString(request_bytes)
    reply = RingHostReply()
    made: list[tuple[str, ShmRing]] = []
    server = acquire_server()
    try:
        for ch, nreaders in zip(req.channels, req.num_readers):
            ring = ShmRing(
                ch.num_slots, nreaders, ch.slot_size_bytes or 1 << 20, name=ch.label or ch.channel_id
            )
            made.append((stream_id(req.graph_id, ch.channel_id), ring))
            server.add_ring(made[-1][0], ring.spec)
            spec = ring.spec
            reply.rings.append(
                ShmEndpoint(
                    channel_id=ch.channel_id,
                    pid=spec.pid,
                    ctrl_fd=spec.ctrl_fd,
                    num_slots=spec.nslots,
                    num_readers=spec.nreaders,
                    reader_index=-1,
                )
            )
        reply.address = server.address
    except Exception as e:
        _close(server, made)
        release_server()
        del reply.rings[:]
        reply.error = f"{type(e).__name__}: {e}"
        return reply.SerializeToString()
    _keep(req.graph_id, made)
    return reply.SerializeToString()


def host_comm_part(
    instance: object,
    graph_id: str,
    group_id: str,
    name: str,
    ranks: Sequence[Sequence[int]],
    node: int,
    capacity_bytes: int,
) -> NetNodeSpec:
    """Runs on a collective's node leader (through ``__ray_call__``): make this node's
    part of the cross-node CPU communicator ``group_id`` and serve its rings; return its
    spec. Freed by :func:`release`.

    Raises:
        OSError, ValueError: the part cannot be made (the caller names this actor).
    """
    from raycg.transports import CpuNetNode

    server = acquire_server()
    try:
        part = CpuNetNode(
            ranks, node, server, group_id=group_id, name=name, capacity_bytes=capacity_bytes, p2p=False
        )
    except BaseException:
        release_server()
        raise
    _keep(graph_id, [part])
    return part.spec


def _keep(graph_id: str, items: list[Any]) -> None:
    """Hold ``items`` for ``graph_id`` until :func:`release`; one server use per graph."""
    with _lock:
        first = graph_id not in _hosted
        _hosted.setdefault(graph_id, []).extend(items)
    if not first:
        release_server()  # one use per graph


def release(graph_id: str) -> None:
    """Close the rings this process hosts for ``graph_id`` (teardown): their readers and
    the writers feeding them end with ChannelClosed."""
    with _lock:
        rings = _hosted.pop(graph_id, None)
        server = _server
    if rings is None:
        return
    if server is not None:
        _close(server, rings)
    release_server()


def _close(server: GrpcServer, items: Sequence[tuple[str, ShmRing] | CpuNetNode]) -> None:
    for item in items:
        if not isinstance(item, tuple):  # a CpuNetNode
            item.close()  # aborts its node's members, drops its rings from the server
        else:
            server.remove_ring(item[0])
            item[1].close()
