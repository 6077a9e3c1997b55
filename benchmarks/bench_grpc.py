"""gRPC benchmark: raycg's cross-node channel against bare grpcio streams of the same bytes.

Between the same two processes (this one and a spawned child), over loopback:

a. raycg's gRPC channel: a GrpcWriter each way, into a ring on the other side read by
   a ShmRingReader (the child reads a 64 MiB array zero-copy and answers with a small
   value). What a cross-node edge of a graph does.
b. a bare sync grpcio bidirectional stream: the request iterator fed from a queue, the
   value as bytes in 1 MiB messages, the child answering once the last one arrived.
c. the same stream with grpcio's asyncio API (grpc.aio) on both sides.
d. a bare sync *pull* shape: each side holds a unary-stream call to the other's server,
   made with ``SingleThreadedUnaryStream`` so that the reading thread polls the call
   itself (no hand-off from grpcio's channel thread), and sends by queueing for its own
   server's handler. Not what raycg does: the shape its channel would take to cut a
   crossing's thread hand-offs (docs/transports.md).
e. two bare sync client streams, one each way, each side's handler handing what it got
   to the other's stream: raycg's own shape with nothing of raycg in it, so a - e is
   what the channel adds to the shape it has.

Two figures each: the round trip of a small value, and the time for 64 MiB to cross
(until the answer is back), as throughput. b and c are what the channel was chosen
from (docs/transports.md, "gRPC"); a is held to within 2x of b.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.experimental
import numpy as np

from raycg.transports import ChannelClosed, GrpcChannelSpec, GrpcServer, GrpcTarget, GrpcWriter, ShmRing

from . import _util

SECTION = "gRPC"
BIG_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
# Few slots: each may grow to a 64 MiB value. So the channel's credits come every 2
# values, more often than a graph's (10 slots, every 5): row a's small trip carries more
# credit traffic than a graph's channel does (grpc-hops measures with a graph's 10).
NSLOTS = 4
METHOD = "/bench.Bare/Stream"
A, B, C = "a. raycg GrpcWriter", "b. bare grpcio stream (sync)", "c. bare grpcio stream (asyncio)"
D = "d. bare grpcio pull (sync)"
E = "e. two bare client streams (sync)"
PULL_METHOD = "/bench.Bare/Pull"
PUSH_METHOD = "/bench.Bare/Push"
OPTIONS = [("grpc.max_send_message_length", 8 << 20), ("grpc.max_receive_message_length", 8 << 20)]
PULL_OPTIONS = [*OPTIONS, (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]


@dataclasses.dataclass(frozen=True)
class Plan:
    small_trips: int = 3_000
    small_batch: int = 500
    big_trips: int = 12
    big_batch: int = 3


QUICK = Plan(small_trips=300, small_batch=100, big_trips=3, big_batch=1)


# --- the child: one echo side per transport ------------------------------------------


def _child(conn: Any) -> None:
    """Serve all three transports until the parent says stop."""
    ring = ShmRing(NSLOTS, 1, name="bench.ping")
    server = GrpcServer("127.0.0.1:0")
    server.add_ring("ping", ring.spec)
    reader = ring.open_reader(0)
    # b, d and e each hold one of its threads for the run's whole length
    bare_sync = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    answers: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()  # e: to the parent's push
    bare_sync.add_generic_rpc_handlers([_bare_handler(_sync_echo, outbox, _push_echo(answers))])
    sync_port = bare_sync.add_insecure_port("127.0.0.1:0")
    bare_sync.start()
    aio_port: queue.SimpleQueue[int] = queue.SimpleQueue()
    loop = asyncio.new_event_loop()
    aio_thread = _start_aio_server(loop, aio_port)
    conn.send((server.address, sync_port, aio_port.get()))
    pong_address, pull_port, push_port = conn.recv()
    puller = threading.Thread(target=_pull_echo, args=(pull_port, outbox), daemon=True)
    puller.start()
    push_channel = grpc.insecure_channel(f"127.0.0.1:{push_port}", options=OPTIONS)
    pushed = push_channel.stream_unary(PUSH_METHOD).future(iter(answers.get, None))
    writer = GrpcWriter(GrpcChannelSpec("bench.pong", NSLOTS, (GrpcTarget(pong_address, "pong"),)))
    try:
        while (value := reader.read()) is not None:
            writer.write(value if isinstance(value, int) else 1)
            del value  # frees the slot the 64 MiB array was read from
    except ChannelClosed:
        pass  # the parent closed the channel: the run is over
    finally:
        writer.close()
        reader.close()
        server.stop()
        ring.close()
        outbox.put(None)
        answers.put(None)
        pushed.cancel()
        push_channel.close()
        bare_sync.stop(None)
        puller.join(5)
        loop.call_soon_threadsafe(loop.stop)
        aio_thread.join()


def _bare_handler(
    fn: Callable[..., Any], outbox: Any = None, push: Callable[..., Any] | None = None
) -> grpc.GenericRpcHandler:
    handlers = {"Stream": grpc.stream_stream_rpc_method_handler(fn)}
    if outbox is not None:  # d: what this side sends, to the other side's pull
        handlers["Pull"] = grpc.unary_stream_rpc_method_handler(lambda _request, _ctx: iter(outbox.get, None))
    if push is not None:  # e: what the other side's client stream sends here
        handlers["Push"] = grpc.stream_unary_rpc_method_handler(push)
    return grpc.method_handlers_generic_handler("bench.Bare", handlers)


def _push_echo(answers: Any) -> Callable[[Iterator[bytes], Any], bytes]:
    """e, the child's side: what the parent's stream brings, answered on the child's own
    stream to the parent (S: echoed; E: the end of a big value)."""

    def handle(requests: Iterator[bytes], context: Any) -> bytes:
        for msg in requests:
            if msg[:1] == b"S":
                answers.put(msg)
            elif msg[:1] == b"E":
                answers.put(b"A")
        return b""

    return handle


def _pull_echo(port: int, outbox: Any) -> None:
    """d, the child's side: pull the parent's messages on this thread, answer through
    this side's own pull server (S: echoed; E: the end of a big value)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=PULL_OPTIONS)
    try:
        for msg in channel.unary_stream(PULL_METHOD)(b""):
            if msg[:1] == b"S":
                outbox.put(msg)
            elif msg[:1] == b"E":
                outbox.put(b"A")
    except grpc.RpcError:
        pass  # the parent stopped its server: the run is over
    finally:
        channel.close()


def _sync_echo(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for msg in requests:  # S: a small value, echoed; E: the end of a big one; else a chunk
        if msg[:1] == b"S":
            yield msg
        elif msg[:1] == b"E":
            yield b"A"


async def _aio_echo(requests: Any, context: Any) -> Any:
    async for msg in requests:
        if msg[:1] == b"S":
            yield msg
        elif msg[:1] == b"E":
            yield b"A"


def _start_aio_server(loop: asyncio.AbstractEventLoop, port_out: Any) -> Any:
    servers = []  # a dropped aio server stops: keep it for the thread's life

    async def start() -> None:
        server = grpc.aio.server(options=OPTIONS)
        servers.append(server)
        server.add_generic_rpc_handlers([_bare_handler(_aio_echo)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_out.put(port)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- the parent's side of each transport ----------------------------------------------


class _Raycg:
    def __init__(self, ping_address: str, conn: Any, pull_port: int, push_port: int):
        self._ring = ShmRing(NSLOTS, 1, name="bench.pong")
        self._server = GrpcServer("127.0.0.1:0")
        self._server.add_ring("pong", self._ring.spec)
        self._reader = self._ring.open_reader(0)
        conn.send((self._server.address, pull_port, push_port))
        self.writer = GrpcWriter(GrpcChannelSpec("bench.ping", NSLOTS, (GrpcTarget(ping_address, "ping"),)))

    def small(self, n: int) -> list[int]:
        return _util.time_calls(self._trip, 42, n)

    def big(self, array: np.ndarray, n: int) -> list[int]:
        return _util.time_calls(self._trip, array, n)

    def _trip(self, value: object) -> None:
        self.writer.write(value)
        self._reader.read()

    def close(self) -> None:
        self.writer.write(None)
        self.writer.close()
        self._reader.close()
        self._server.stop()
        self._ring.close()


class _BareTrips:
    """A bare sync side's two trips, over what a subclass sends with (``_put``) and how
    the answer comes back (``_answer``)."""

    def _put(self, msg: bytes) -> None:
        raise NotImplementedError

    def _answer(self) -> object:
        raise NotImplementedError

    def small(self, n: int) -> list[int]:
        return _util.time_calls(self._small_trip, b"S42", n)

    def _small_trip(self, msg: bytes) -> None:
        self._put(msg)
        self._answer()

    def big(self, data: bytes, n: int) -> list[int]:
        return _util.time_calls(self._big_trip, data, n)

    def _big_trip(self, data: bytes) -> None:
        for off in range(0, len(data), CHUNK_BYTES):
            self._put(data[off : off + CHUNK_BYTES])  # a copy, as raycg's messages are
        self._put(b"E")
        self._answer()


class _BareSync(_BareTrips):
    def __init__(self, port: int):
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._responses = self._channel.stream_stream(METHOD)(iter(self._queue.get, None))

    def _put(self, msg: bytes) -> None:
        self._queue.put(msg)

    def _answer(self) -> object:
        return next(self._responses)

    def close(self) -> None:
        self._queue.put(None)
        self._channel.close()


class _BarePull(_BareTrips):
    """d: this side's pull server (what it sends), and its pull of the child's answers
    (read on this thread: SingleThreadedUnaryStream)."""

    def __init__(self) -> None:
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._server = grpc.server(futures.ThreadPoolExecutor(2), options=OPTIONS)
        self._server.add_generic_rpc_handlers([_bare_handler(_sync_echo, self._outbox)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self._channel: Any = None

    def connect(self, port: int) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=PULL_OPTIONS)
        self._answers = self._channel.unary_stream(PULL_METHOD)(b"")

    def _put(self, msg: bytes) -> None:
        self._outbox.put(msg)

    def _answer(self) -> object:
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)
        if self._channel is not None:
            self._channel.close()
        self._server.stop(None)


class _BarePush(_BareTrips):
    """e: this side's stream to the child's push handler, and its own push server, whose
    handler hands the child's answers to this thread (a queue, as raycg's ring)."""

    def __init__(self) -> None:
        self._answers: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._server = grpc.server(futures.ThreadPoolExecutor(2), options=OPTIONS)
        self._server.add_generic_rpc_handlers([_bare_handler(_sync_echo, push=self._take)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._channel: Any = None

    def _take(self, requests: Iterator[bytes], context: Any) -> bytes:
        for msg in requests:
            self._landed(msg)
        return b""

    def _landed(self, msg: bytes) -> None:
        """The push handler has a message (bench_grpc_hops.py stamps it here)."""
        self._answers.put(msg)

    def _requests(self) -> Iterator[bytes]:
        """The stream's messages, as gRPC's thread takes them (stamped there too)."""
        while (msg := self._queue.get()) is not None:
            yield msg

    def connect(self, port: int) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        self._call = self._channel.stream_unary(PUSH_METHOD).future(self._requests())

    def _put(self, msg: bytes) -> None:
        self._queue.put(msg)

    def _answer(self) -> object:
        return self._answers.get()

    def close(self) -> None:
        self._queue.put(None)
        if self._channel is not None:
            self._call.cancel()
            self._channel.close()
        self._server.stop(None)


class _BareAio:
    """Driven from this thread's own event loop, one batch per run_until_complete."""

    def __init__(self, port: int):
        self._loop = asyncio.new_event_loop()
        self._call = self._loop.run_until_complete(self._open(port))

    async def _open(self, port: int) -> Any:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        return self._channel.stream_stream(METHOD)()

    def small(self, n: int) -> list[int]:
        async def batch() -> list[int]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await self._call.write(b"S42")
                await self._call.read()
                samples.append(time.perf_counter_ns() - t0)
            return samples

        return self._loop.run_until_complete(batch())

    def big(self, data: bytes, n: int) -> list[int]:
        async def batch() -> list[int]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                for off in range(0, len(data), CHUNK_BYTES):
                    await self._call.write(data[off : off + CHUNK_BYTES])
                await self._call.write(b"E")
                await self._call.read()
                samples.append(time.perf_counter_ns() - t0)
            return samples

        return self._loop.run_until_complete(batch())

    def close(self) -> None:
        async def shut() -> None:
            await self._call.done_writing()
            await self._channel.close()

        self._loop.run_until_complete(shut())
        self._loop.close()


# --- the run ------------------------------------------------------------------------


def _measure(plan: Plan) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_child, args=(child_conn,), daemon=True)
    child.start()
    ping_address, sync_port, aio_port = conn.recv()
    pull, push = _BarePull(), _BarePush()
    sides = {
        A: _Raycg(ping_address, conn, pull.port, push.port),
        B: _BareSync(sync_port),
        C: _BareAio(aio_port),
        D: pull,
        E: push,
    }
    pull.connect(sync_port)  # the child's pull and push handlers are on its bare sync server
    push.connect(sync_port)
    array = np.random.default_rng(0).random(BIG_BYTES // 8)
    data = array.tobytes()
    try:
        with _util.gc_disabled():
            for side in sides.values():
                side.small(50)  # connections up, caches warm
            small = _util.interleave(
                {name: side.small for name, side in sides.items()}, plan.small_trips, plan.small_batch
            )
            big = _util.interleave(
                {
                    A: lambda n: sides[A].big(array, n),  # type: ignore[attr-defined]
                    B: lambda n: sides[B].big(data, n),  # type: ignore[attr-defined]
                    C: lambda n: sides[C].big(data, n),  # type: ignore[attr-defined]
                    D: lambda n: sides[D].big(data, n),  # type: ignore[attr-defined]
                    E: lambda n: sides[E].big(data, n),  # type: ignore[attr-defined]
                },
                plan.big_trips,
                plan.big_batch,
            )
    finally:
        for side in sides.values():
            side.close()
        _util.join_or_kill(child)
    return small, big


def _gbps(samples_ns: list[int]) -> float:
    return BIG_BYTES / (float(np.median(samples_ns)) / 1e9) / 1e9


def _table(small: dict[str, list[int]], big: dict[str, list[int]]) -> str:
    rows = [
        [
            name,
            _util.format_number(_util.percentile_us(small[name], 50)),
            _util.format_number(_util.percentile_us(small[name], 90)),
            _util.format_number(_util.percentile_us(big[name], 50) / 1e3),
            _util.format_number(_gbps(big[name])),
        ]
        for name in small
    ]
    header = ["Transport", "small p50 us", "small p90 us", "64 MiB p50 ms", "64 MiB GB/s"]
    return _util.format_table(header, rows)


def _targets(small: dict[str, list[int]], big: dict[str, list[int]]) -> list[_util.Target]:
    p50 = {name: _util.percentile_us(s, 50) for name, s in small.items()}
    return [
        _util.Target("small round trip, raycg / bare sync stream", p50[A] / p50[B], 2.0, "x"),
        _util.Target("64 MiB time, raycg / bare sync stream", _gbps(big[B]) / _gbps(big[A]), 2.0, "x"),
    ]


def _pull_note(small: dict[str, list[int]]) -> str:
    p50 = {name: _util.percentile_us(s, 50) for name, s in small.items()}
    return (
        f"Small round trips: the pull shape (d) is {p50[D] / p50[B]:.2f}x the bare stream's (b), and "
        f"raycg's own shape bare (e) {p50[E] / p50[B]:.2f}x; raycg's channel (a) is {p50[A] / p50[E]:.2f}x "
        f"its shape bare, {p50[A] / p50[D]:.2f}x the pull shape."
    )


def main(argv: list[str]) -> int:
    parser = _util.make_parser("grpc", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    load = _util.warn_if_busy()
    small, big = _measure(plan)
    run = (
        f"{plan.small_trips} small trips and {plan.big_trips} of 64 MiB per transport, interleaved in "
        f"batches, over loopback between two processes, {CHUNK_BYTES >> 20} MiB messages, "
        f"grpcio {grpc.__version__}, load average {load:.2f}{' (--quick)' if args.quick else ''}"
    )
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}.\nRun: {run}.",
            _table(small, big),
            _util.format_targets(_targets(small, big)),
            _pull_note(small),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0
