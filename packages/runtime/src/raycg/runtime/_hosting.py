"""Rings for the GRPC channels read on this node, created and served by one process of
the node: a reader actor there, or the caller (actor side; the caller uses it too).

A GRPC channel's writer sends each value once per reader node; on that node it lands in a
shared-memory ring that its readers open as any ring. The ring is made by a process of
that node (memfds are reached through /proc/<pid>/fd, on the node only), which also runs
the node's gRPC server: one per process, made on first use, listening on the node's own
address as Ray reports it, on a free port, for the process's life. ``RAYCG_GRPC_HOST``
overrides the address (tests run every node of a cluster on one machine, on loopback).
"""

from __future__ import annotations

import os
import threading

from raycg.proto import ChannelPlan, RingHostReply, RingHostRequest, ShmEndpoint
from raycg.transports import GrpcServer, ShmRing

LISTEN_HOST_ENV = "RAYCG_GRPC_HOST"
_server: GrpcServer | None = None
_lock = threading.Lock()
# graph id -> the rings this process hosts for it, until its teardown.
_hosted: dict[str, list[tuple[str, ShmRing]]] = {}


def stream_id(graph_id: str, channel_id: str) -> str:
    """The name a channel's ring has at its node's server: unique across graphs."""
    return f"{graph_id}/{channel_id}"


def node_server() -> GrpcServer:
    """This process's gRPC server, started on first use on the node's address."""
    global _server
    with _lock:
        if _server is None:
            import ray

            host = os.environ.get(LISTEN_HOST_ENV) or ray.util.get_node_ip_address()
            _server = GrpcServer(f"{host}:0")
        return _server


def make_ring(ch: ChannelPlan, nreaders: int) -> ShmRing:
    """The ring of GRPC channel ``ch`` on one of its reader nodes."""
    return ShmRing(ch.num_slots, nreaders, ch.slot_size_bytes or 1 << 20, name=ch.label or ch.channel_id)


def host_rings(instance: object, request_bytes: bytes) -> bytes:
    """Runs on the host (through ``__ray_call__``, or in the caller): make the rings a
    ``RingHostRequest`` asks for and serve them; return a ``RingHostReply``."""
    req = RingHostRequest.FromString(request_bytes)
    reply = RingHostReply()
    made: list[tuple[str, ShmRing]] = []
    try:
        server = node_server()
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
        _close(made)
        del reply.rings[:]
        reply.error = f"{type(e).__name__}: {e}"
        return reply.SerializeToString()
    with _lock:
        _hosted.setdefault(req.graph_id, []).extend(made)
    return reply.SerializeToString()


def release(graph_id: str) -> None:
    """Close the rings this process hosts for ``graph_id`` (teardown): their readers and
    the writers feeding them end with ChannelClosed."""
    with _lock:
        rings = _hosted.pop(graph_id, [])
    _close(rings)


def _close(rings: list[tuple[str, ShmRing]]) -> None:
    for sid, ring in rings:
        if _server is not None:
            _server.remove_ring(sid)
        ring.close()
