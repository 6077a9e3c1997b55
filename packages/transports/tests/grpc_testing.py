"""Helpers for the gRPC channel's tests: a receiving "node" and a writer, each in a
spawned child process, driven over a pipe as transports_testing.Peer drives a ring end.

A :class:`Node` is a process that owns a ring, serves it on a loopback gRPC server and
holds the ring's readers; a :class:`RemoteWriter` is a process holding a GrpcWriter.
Children inherit the environment at spawn: a test sets RAYCG_FAULTS before it starts a
writer to inject faults into that writer's streams only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from transports_testing import Child, digest

import raycg.transports as rt


def warm_up_grpc() -> None:
    """Make gRPC create its process-wide pollers (epoll fds and eventfds, kept for the
    life of the process) before a leak check takes its baseline."""
    import contextlib
    import logging

    with rt.GrpcServer("127.0.0.1:0") as server:
        logging.getLogger("grpc").disabled = True
        with contextlib.suppress(OSError):
            rt.GrpcServer(server.address)  # a failed bind makes a poller of its own


class Node(Child):
    """A receiving node: ``nreaders`` readers of a ring of ``nslots``, fed by gRPC."""

    def __init__(self, nslots: int, nreaders: int = 1, channel_id: str = "edge"):
        super().__init__(_node_main, nslots, nreaders, channel_id)
        self.address, self.channel_id = self.info

    @property
    def target(self) -> rt.GrpcTarget:
        return rt.GrpcTarget(self.address, self.channel_id)


class RemoteWriter(Child):
    """A GrpcWriter for ``spec`` in a child process."""

    def __init__(self, spec: rt.GrpcChannelSpec):
        super().__init__(_writer_main, spec)


def _loop(conn: Any, ops: dict[str, Callable[..., object]]) -> None:
    while True:
        op, args = conn.recv()
        if op == "exit":
            return
        try:
            conn.send(("ok", ops[op](*args)))
        except Exception as e:
            conn.send(("err", (type(e).__name__, str(e), {})))


def _node_main(conn: Any, nslots: int, nreaders: int, channel_id: str) -> None:
    ring = rt.ShmRing(nslots, nreaders, slot_bytes=4096, name=f"node.{channel_id}")
    server = rt.GrpcServer("127.0.0.1:0")
    server.add_ring(channel_id, ring.spec)
    readers = [ring.open_reader(i) for i in range(nreaders)]
    held: list[object] = []

    def hold(index: int, timeout_s: float | None = None) -> object:
        value = readers[index].read(timeout_s)
        held.append(value)
        return digest(value)

    def zero_copy(index: int) -> bool:
        """Whether reader ``index`` holds the last value it held without a copy."""
        return bool(readers[index].pinned())

    ops: dict[str, Callable[..., object]] = {
        "read": lambda i, timeout_s=None: readers[i].read(timeout_s),
        "digest": lambda i, timeout_s=None: digest(readers[i].read(timeout_s)),
        "read_many": lambda i, n: [readers[i].read() for _ in range(n)],
        "hold": hold,
        "drop": held.clear,
        "zero_copy": zero_copy,
        "close_reader": lambda i: readers[i].close(),
    }
    conn.send(("ok", (server.address, channel_id)))
    try:
        _loop(conn, ops)
    finally:
        held.clear()
        for r in readers:
            r.close()
        server.stop()
        ring.close()


def _writer_main(conn: Any, spec: rt.GrpcChannelSpec) -> None:
    try:
        writer = rt.GrpcWriter(spec)
    except Exception as e:
        conn.send(("err", (type(e).__name__, str(e), {})))
        return
    ops: dict[str, Callable[..., object]] = {
        "write": lambda value, timeout_s=None: writer.write(value, timeout_s),
        "write_many": lambda values, timeout_s=None: [writer.write(v, timeout_s) for v in values] and None,
        "write_big": lambda nbytes, seed: writer.write(_big(nbytes, seed)),
        "close": writer.close,
    }
    conn.send(("ok", os.getpid()))
    try:
        _loop(conn, ops)
    finally:
        writer.close()


def _big(nbytes: int, seed: int) -> object:
    from transports_testing import big_array

    return big_array(nbytes, seed)
