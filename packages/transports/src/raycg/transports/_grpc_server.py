"""A process's gRPC server: where the streams of other nodes' writers arrive.

One per process that receives (at most one is needed per node). Each incoming
stream (two calls: _grpc_wire.py) names the ring it feeds, in its credits call's
request and its values call's first message; the ring is registered beforehand with
:meth:`GrpcServer.add_ring` by the process that set it up on this node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from . import _grpc_wire as wire
from ._address import join_host_port, split_host_port
from ._deadline import deadline_after, remaining
from ._errors import ChannelBroken, ChannelError
from ._grpc_config import METHOD, POLL_S, REGISTER_TIMEOUT_S, SEND_METHOD, SERVER_OPTIONS, SERVICE
from ._grpc_receiver import Receiver, RingFeed
from ._shm_ring import ShmRingSpec

# Each stream holds two of the server's handler threads (one per call) for its whole life.
DEFAULT_MAX_STREAMS = 64
# How long stop waits, past its grace, for the calls and their threads to end. Cancelled,
# ours end within a slice (POLL_S), or once a receiver's wait for its intake (5 s) ends.
STOP_BOUND_S = 5.0

_log = logging.getLogger(__name__)


class _CallThreads(futures.Executor):
    """grpc.server's executor: a daemon thread per call, waited for with a bound.

    Not ``futures.ThreadPoolExecutor``: its shutdown waits without a timeout, and its
    threads are not daemons (interpreter exit joins them: concurrent.futures.thread's
    exit hook), so one handler stuck in a wait would hang ``stop``, then the process's
    exit. A pool would reuse nothing here anyway: every call of ours is half a stream
    and holds its thread for the stream's whole life.
    """

    def __init__(self, name: str):
        self._name = name
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        thread = threading.Thread(
            target=self._run, args=(future, fn, args, kwargs), name=self._name, daemon=True
        )
        with self._lock:  # started under it: join() never meets a thread not yet started
            if self._closed:
                raise RuntimeError(f"{self._name}: the server is stopping; no new call")
            # Ended threads leave the set here, not as they end: one that took itself out
            # would still be running its last lines when join() looked, and join()
            # would return before it ended.
            self._threads = {t for t in self._threads if t.is_alive()}
            thread.start()
            self._threads.add(thread)
        return future

    @staticmethod
    def _run(future: futures.Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        if future.set_running_or_notify_cancel():
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # what an executor does: the future holds it
                future.set_exception(e)
            else:
                future.set_result(result)

    def join(self, timeout_s: float) -> list[threading.Thread]:
        """Take no more calls; wait up to ``timeout_s`` for the running ones to end.
        Returns the threads still running (daemons: they never hold the process up)."""
        deadline = deadline_after(timeout_s)
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for thread in threads:
            thread.join(remaining(deadline))
        return [t for t in threads if t.is_alive()]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.join(STOP_BOUND_S if wait else 0)  # bounded even when asked to wait


class GrpcServer:
    """Listens on ``address`` for the streams that feed this node's rings.

    Args:
        address: ``host:port`` to listen on, an IPv6 host in brackets (``[::1]:0``;
            :func:`join_host_port` makes it); port 0: any free port (:attr:`address`
            says which). Listen on the node's own address, or loopback in tests.
        max_streams: streams served at once; one more is refused (RESOURCE_EXHAUSTED),
            which its writer sees as ChannelBroken, rather than left waiting.
        register_timeout_s: how long a stream waits for the ring it names to be
            registered before it is refused.

    Raises:
        ValueError: ``address`` is not ``host:port`` (an IPv6 host without brackets).
        OSError: the address cannot be listened on.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:0",
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        register_timeout_s: float = REGISTER_TIMEOUT_S,
    ):
        host, _ = split_host_port(address)  # before anything is made: nothing to undo
        self._rings: dict[str, ShmRingSpec] = {}
        self._taken: set[str] = set()
        self._receivers: dict[str, Receiver] = {}  # streams whose values call may attach
        self._register_timeout_s = register_timeout_s
        self._stopped = False
        self._cond = threading.Condition()
        calls = 2 * max_streams
        self._calls = _CallThreads("raycg-grpc-stream")  # at most `calls`: gRPC refuses more
        self._server = grpc.server(
            self._calls,  # type: ignore[arg-type]  # grpc only submits to it
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=calls,
        )
        handlers = {  # raw bytes both ways
            METHOD: grpc.unary_stream_rpc_method_handler(self._open),
            SEND_METHOD: grpc.stream_unary_rpc_method_handler(self._send),
        }
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError as e:  # grpcio raises for a port in use; older ones return 0
            port, why = 0, f": {e}"
        else:
            why = ""
        if not port:
            self._server.stop(None)  # frees its completion queue (an epoll fd and an eventfd)
            self._calls.join(0)
            raise OSError(
                f"cannot listen on {address!r}{why} (is the port in use, or not this node's address?)"
            )
        self.address = join_host_port(host, port)
        self._server.start()

    def __repr__(self) -> str:
        return f"GrpcServer({self.address!r})"

    def add_ring(self, channel_id: str, spec: ShmRingSpec) -> None:
        """Let one stream, that names ``channel_id``, feed the ring ``spec``.

        Raises:
            ValueError: ``channel_id`` is registered already.
        """
        with self._cond:
            if channel_id in self._rings or channel_id in self._taken:
                raise ValueError(f"{self!r}: a ring is registered as {channel_id!r} already")
            self._rings[channel_id] = spec
            self._cond.notify_all()

    def remove_ring(self, channel_id: str) -> None:
        """Forget ``channel_id`` if no stream claimed it yet (a graph torn down before its
        writer connected); a stream that did ends with its ring's close."""
        with self._cond:
            self._rings.pop(channel_id, None)
            self._taken.discard(channel_id)

    def _open(self, request: bytes, context: Any) -> Iterator[bytes]:
        """A stream's credits call: find its ring, then serve its credits."""
        try:
            channel_id, nslots = wire.parse_hello(request)
            spec = self._claim(channel_id, nslots)
            feed = RingFeed(spec)
        except ChannelError as e:
            yield wire.end(wire.END_BROKEN, str(e))
            return
        receiver = Receiver(feed, spec.name, spec.nslots)
        with self._cond:
            self._receivers[channel_id] = receiver
            self._cond.notify_all()
        try:
            yield from receiver.serve(context)
        finally:
            with self._cond:
                if self._receivers.get(channel_id) is receiver:
                    del self._receivers[channel_id]  # its values call never came

    def _send(self, requests: Iterator[bytes], context: Any) -> bytes:
        """A stream's values call: once its credits call has found the ring, feed it.

        A values call with no stream to feed fails (FAILED_PRECONDITION): the writer
        then ends its credits call too (the credits call says why, where it can).
        """
        try:
            channel_id = wire.parse_attach(next(requests))
        except (StopIteration, grpc.RpcError, ChannelError):
            return b""  # the writer left, or is not one of ours
        receiver = self._await_receiver(channel_id, context)
        if receiver is None:  # abort raises: the call ends with this status
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self!r}: no stream {channel_id!r} to feed")
        else:
            receiver.take(requests)
        return b""

    def _await_receiver(self, channel_id: str, context: Any) -> Receiver | None:
        """The stream ``channel_id``'s receiver, once its credits call made it (the two
        calls may arrive in either order; the credits call may itself wait up to
        ``register_timeout_s`` for its ring)."""
        deadline = time.monotonic() + 2 * self._register_timeout_s
        with self._cond:
            while not self._stopped and context.is_active():
                receiver = self._receivers.pop(channel_id, None)
                if receiver is not None:
                    return receiver if receiver.attach() else None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, POLL_S))
        return None

    def _claim(self, channel_id: str, nslots: int) -> ShmRingSpec:
        with self._cond:
            self._cond.wait_for(lambda: channel_id in self._rings or self._stopped, self._register_timeout_s)
            if self._stopped or channel_id not in self._rings:
                raise ChannelBroken(f"{self!r}: no ring is registered as {channel_id!r}")
            spec = self._rings.pop(channel_id)
            self._taken.add(channel_id)
        if spec.nslots != nslots:
            raise ChannelBroken(
                f"channel {spec.name!r}: the writer expects {nslots} slots, the ring on {self.address} "
                f"has {spec.nslots}"
            )
        return spec

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop listening and end every stream (their rings break unless closed first).
        Idempotent; returns once every call has ended, within ``grace_s`` plus
        STOP_BOUND_S whatever they do: a call thread still running then (a handler
        stuck in a wait) is logged and left to end on its own (a daemon thread)."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        deadline = deadline_after(grace_s + STOP_BOUND_S)
        self._server.stop(grace_s).wait(remaining(deadline))  # cancels every call after grace_s
        stuck = self._calls.join(remaining(deadline))
        if stuck:
            _log.warning(
                "%r: %d call thread(s) still running %.1f s after stop; left to end on their own",
                self,
                len(stuck),
                grace_s + STOP_BOUND_S,
            )

    def __enter__(self) -> GrpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["GrpcServer"]
