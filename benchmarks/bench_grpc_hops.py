"""Where a small round trip over gRPC spends its time: raycg's channel vs its shape bare, hop by hop.

Two processes, as in bench_grpc.py: the parent sends a small value, the child echoes it.
Two transports, taking turns in batches between the same two processes:

- raycg: a GrpcWriter each way into the other side's ShmRing (a GrpcServer's intake writes it).
- bare: the same shape without raycg, a sync client stream each way whose server-side handler
  hands each message to the reading thread through a queue (bench_grpc.py's row e).

Each hop is stamped with CLOCK_MONOTONIC, one clock for every process of a Linux machine.
The stamps come from wrappers this benchmark puts around two of raycg's private methods, in
its own processes only: ``Stream._outgoing`` (gRPC's sending thread takes a message) and
``RingFeed.put`` (the receiving intake hands a value to the ring). raycg has no tracing
hook of its own, because one on the hot path would cost every user something even when off.
A trip counts only if its stamps came in the expected order (hops of two trips never overlap
in a ping-pong). The table gives each hop's p50 separately, so the hops' p50s do not add up
to the total's p50.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import multiprocessing as mp
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

from raycg.transports import GrpcChannelSpec, GrpcServer, GrpcTarget, GrpcWriter, ShmRing

from . import _util
from .bench_grpc import SECTION, _BarePush

RAYCG, BARE = "raycg", "bare"
# Each ring's slots: a graph's, whose cross-process channels get max_inflight_executions
# slots (Ray's default, 10); the stream's credits come every half ring.
NSLOTS = 10
TRIPS, QUICK_TRIPS, BATCH, WARMUP = 1_000, 300, 20, 40
# The stamps of one round trip in order, P: the parent's, C: the child's. Every hop is
# "a stamp to the next one".
ORDER = [
    "P write",
    "P taken",
    "C landed",
    "C read",
    "C write",
    "C taken",
    "P landed",
    "P read",
]
HOPS = {
    ("P write", "P taken"): "there: the writer, until gRPC's sending thread takes the message",
    ("P taken", "C landed"): "there: across, until the receiving handler hands the value on",
    ("C landed", "C read"): "there: that hand-off, until the reading thread has the value",
    ("C read", "C write"): "the echo (the child writes what it read)",
    ("C write", "C taken"): "back: the writer, until gRPC's sending thread takes the message",
    ("C taken", "P landed"): "back: across, until the receiving handler hands the value on",
    ("P landed", "P read"): "back: that hand-off, until the reading thread has the value",
}

_STAMPS: list[tuple[str, int]] = []  # this process's (stamp, ns), appended from any thread


def _stamp(name: str) -> None:
    _STAMPS.append((name, time.monotonic_ns()))  # list.append: atomic under the GIL


def _wrap_raycg(side: str) -> None:
    """Stamp raycg's two inner hops in this process (see the module's docstring)."""
    from raycg.transports import _grpc_receiver, _grpc_stream

    outgoing = _grpc_stream.Stream._outgoing
    put = _grpc_receiver.RingFeed.put

    def stamped_outgoing(self: Any) -> Iterator[bytes]:
        for msg in outgoing(self):
            _stamp(f"{side} taken")
            yield msg

    def stamped_put(self: Any, meta: Any, raws: Any) -> None:
        _stamp(f"{side} landed")
        put(self, meta, raws)

    _grpc_stream.Stream._outgoing = stamped_outgoing  # type: ignore[method-assign]
    _grpc_receiver.RingFeed.put = stamped_put  # type: ignore[method-assign]


class _Bare(_BarePush):
    """One side of the bare shape (bench_grpc.py's row e), its two inner hops stamped."""

    def __init__(self, side: str):
        self._side = side
        super().__init__()

    def _landed(self, msg: bytes) -> None:
        _stamp(f"{self._side} landed")
        super()._landed(msg)

    def _requests(self) -> Iterator[bytes]:
        for msg in super()._requests():
            _stamp(f"{self._side} taken")
            yield msg

    def send(self, msg: bytes) -> None:
        self._put(msg)

    def received(self, timeout_s: float) -> bytes:
        return self._answers.get(timeout=timeout_s)


class _Side:
    """One process's ends of both transports: the ring its server feeds and its bare
    server, then, once the other side's addresses are known, its writer and its bare
    client stream."""

    def __init__(self, side: str, inbound: str):
        self.ring = ShmRing(NSLOTS, 1, name=f"hops.{inbound}")
        self.server = GrpcServer("127.0.0.1:0")
        self.server.add_ring(inbound, self.ring.spec)
        self.reader = self.ring.open_reader(0)
        self.bare = _Bare(side)
        self.writer: GrpcWriter | None = None
        self.addresses = (self.server.address, self.bare.port)

    def connect(self, outbound: str, addresses: tuple[str, int]) -> GrpcWriter:
        address, port = addresses
        self.bare.connect(port)
        self.writer = GrpcWriter(
            GrpcChannelSpec(f"hops.{outbound}", NSLOTS, (GrpcTarget(address, outbound),))
        )
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader.close()
        self.server.stop()
        self.ring.close()
        self.bare.close()


def _child(conn: Any) -> None:
    """Echo on both transports until the parent ends each; then send the stamps back."""
    _wrap_raycg("C")
    side = _Side("C", "ping")
    try:
        conn.send(side.addresses)
        writer = side.connect("pong", conn.recv())
        while (kind := conn.recv()) is not None:  # one batch at a time: (transport, trips)
            transport, n = kind
            for _ in range(n):
                if transport == RAYCG:
                    value = side.reader.read(timeout_s=10)
                    _stamp("C read")
                    _stamp("C write")
                    writer.write(value, timeout_s=10)
                else:
                    msg = side.bare.received(10)
                    _stamp("C read")
                    _stamp("C write")
                    side.bare.send(msg)
        conn.send(_STAMPS)
    finally:
        side.close()


def _measure(trips: int) -> tuple[list[tuple[str, int]], dict[str, list[tuple[int, int]]]]:
    """Run ``trips`` round trips per transport; return every stamp and each trip's span."""
    _wrap_raycg("P")
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_child, args=(child_conn,), daemon=True)
    child.start()
    child_addresses = conn.recv()
    side = _Side("P", "pong")
    conn.send(side.addresses)
    writer = side.connect("ping", child_addresses)
    reader, bare = side.reader, side.bare
    spans: dict[str, list[tuple[int, int]]] = {RAYCG: [], BARE: []}
    try:
        with _util.gc_disabled():
            for k in range(2 * (trips + WARMUP) // BATCH):
                transport = (RAYCG, BARE)[k % 2]
                conn.send((transport, BATCH))
                for _ in range(BATCH):
                    t0 = time.monotonic_ns()
                    _stamp("P write")
                    if transport == RAYCG:
                        writer.write(42, timeout_s=10)
                        reader.read(timeout_s=10)
                    else:
                        bare.send(b"42")
                        bare.received(10)
                    _stamp("P read")
                    spans[transport].append((t0, time.monotonic_ns()))
        conn.send(None)
        child_stamps = conn.recv()
    finally:
        side.close()
        _util.join_or_kill(child)
    return sorted(_STAMPS + child_stamps, key=lambda s: s[1]), spans


def _hops(stamps: list[tuple[str, int]], spans: list[tuple[int, int]]) -> tuple[dict[str, list[int]], int]:
    """Each hop's durations (ns) over the trips whose stamps came in ORDER, and how many did."""
    times = [t for _, t in stamps]
    hops: dict[str, list[int]] = collections.defaultdict(list)
    good = 0
    for t0, t1 in spans[WARMUP:]:
        trip = stamps[bisect.bisect_left(times, t0) : bisect.bisect_right(times, t1)]
        if [name for name, _ in trip] != ORDER:
            continue
        good += 1
        for (a, ta), (b, tb) in itertools.pairwise(trip):
            hops[HOPS[(a, b)]].append(tb - ta)
        hops["the round trip"].append(trip[-1][1] - trip[0][1])
    return hops, good


def main(argv: list[str]) -> int:
    parser = _util.make_parser("grpc-hops", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    trips = QUICK_TRIPS if args.quick else TRIPS
    load = _util.warn_if_busy()
    stamps, spans = _measure(trips)
    per = {t: _hops(stamps, spans[t]) for t in (RAYCG, BARE)}
    rows = []
    for hop in [*HOPS.values(), "the round trip"]:
        p50 = {t: _util.percentile_us(per[t][0][hop], 50) if per[t][0][hop] else math.nan for t in per}
        gap = p50[RAYCG] - p50[BARE]
        rows.append([hop, *(_util.format_number(p50[t]) for t in per), _util.format_number(gap)])
    header = ["Hop (p50 of each)", "raycg us", "bare us", "raycg - bare us"]
    run = (
        f"{trips} small round trips per transport between two processes over loopback, taking turns in "
        f"batches of {BATCH} ({WARMUP} first trips each left out), raycg and bare both stamped; trips in "
        f"order: raycg {per[RAYCG][1]}, bare {per[BARE][1]}; grpcio {grpc.__version__}, "
        f"numpy {np.__version__}, load average {load:.2f}{' (--quick)' if args.quick else ''}"
    )
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}: hop by hop",
            f"Machine: {_util.describe_machine()}.\nRun: `python -m benchmarks grpc-hops`: {run}.",
            _util.format_table(header, rows),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0
