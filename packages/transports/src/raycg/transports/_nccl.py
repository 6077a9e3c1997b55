"""A NCCL communicator over cupy (``cupy-cuda12x``, raycg's ``gpu`` extra).

Written from cupy's documented API (``cupy.cuda.nccl``) and NCCL's semantics; it has not
run on GPU hardware yet (docs/collectives.md says what has). cupy and torch are
imported lazily: this module imports on a machine without either, and says what to
install when it is used.

- The unique id is the caller's: :func:`nccl_unique_id` on one process (the driver, at
  compile), handed to every member, which makes ``NcclCommunicator(uid, world_size,
  rank)``. ``ncclCommInitRank`` blocks until every member joined (bounded by NCCL's
  own bootstrap timeout, not by ours).
- Warm-up at initialize: one allreduce and a grouped exchange of one element with every
  peer, so the first execution does not pay NCCL's lazy connection setup.
- Dedicated streams: sends, receives and collectives each run on their own CUDA stream,
  made to wait for the caller's current stream first (the tensor is ready), and the
  tensors are recorded on them (the caching allocator does not reuse them too early).
- Bounded waits: a call that must complete (recv, collectives) records a CUDA event and
  polls it (every 20 µs for 2 ms, then every 2 ms: a member waiting on a late peer
  stays nearly idle), checking ``check_async_error()``, until the deadline; past it the
  communicator is aborted (``ncclCommAbort``) and ChannelTimeout raised. ``abort()``
  from another thread ends every poll with ChannelClosed.
- ``send_each`` (one tensor to several peers) and ``exchange`` (sends and receives
  together) run inside ``groupStart``/``groupEnd``, so paired operations can never
  deadlock whatever the order in which the members issue them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._communicator import Allocator, Communicator, ReduceOp
from ._deadline import deadline_after, remaining
from ._errors import ChannelBroken, ChannelClosed, ChannelTimeout

DEFAULT_TIMEOUT_S = 30.0
_POLL_S = 20e-6  # between polls of a CUDA event: a NCCL hop takes ~10 µs
# Polls that fast for this long; then the pause doubles up to _POLL_MAX_S, so that a
# member waiting seconds for a late peer wakes ~500 times a second, not ~20,000.
_POLL_FAST_S = 2e-3
_POLL_MAX_S = 2e-3

# NCCL's enum values (nccl.h), for cupy builds that do not export every name.
_NCCL_OPS = {ReduceOp.SUM: 0, ReduceOp.PRODUCT: 1, ReduceOp.MAX: 2, ReduceOp.MIN: 3, ReduceOp.AVG: 4}
_NCCL_TYPES = {
    "int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5,
    "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9,
}  # fmt: skip


def _modules() -> tuple[Any, Any, Any]:
    """(cupy, cupy.cuda.nccl, torch), or an ImportError saying what to install."""
    try:
        import cupy
        import torch
        from cupy.cuda import nccl
    except ImportError as e:
        raise ImportError(
            f"the NCCL communicator needs cupy and torch with CUDA ({e}): pip install 'raycg[gpu]'"
        ) from e
    if not getattr(nccl, "available", True):
        raise ImportError("cupy was built without NCCL: install cupy-cuda12x from PyPI ('raycg[gpu]')")
    return cupy, nccl, torch


def nccl_unique_id() -> tuple[int, ...]:
    """A fresh NCCL unique id (``ncclGetUniqueId``), to hand to every member."""
    return tuple(_modules()[1].get_unique_id())


def _nccl_type(dtype: Any, reducing: bool) -> tuple[int, int]:
    """(NCCL datatype, elements per tensor element) for ``dtype``. A dtype NCCL lacks
    moves as bytes where nothing is reduced (p2p, broadcast, allgather)."""
    name = str(dtype).removeprefix("torch.")
    if name in _NCCL_TYPES:
        return _NCCL_TYPES[name], 1
    if reducing:
        raise TypeError(f"NCCL cannot reduce {dtype} tensors: use one of {', '.join(_NCCL_TYPES)}")
    import torch

    return _NCCL_TYPES["uint8"], torch.empty((), dtype=dtype).element_size()


class NcclCommunicator(Communicator):
    """One member of a NCCL group, on this process's current CUDA device (or ``device``).

    Args:
        unique_id: from :func:`nccl_unique_id`, the same for every member.
        world_size: members.
        rank: join at once as this rank (else call :meth:`initialize`).
        device: the CUDA device index (default: torch's current device).
        timeout_s: the default timeout of every waiting call (None: forever).
        warm_up: connect to every peer at initialize.
    """

    def __init__(
        self,
        unique_id: tuple[int, ...],
        world_size: int,
        rank: int | None = None,
        *,
        device: int | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        warm_up: bool = True,
    ):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self._uid, self._world, self._device = tuple(unique_id), world_size, device
        self.timeout_s, self._warm_up = timeout_s, warm_up
        self._rank: int | None = None
        self._comm: Any = None
        self._aborted = False
        self._lock = threading.Lock()  # abort() against destroy(), from any thread
        if rank is not None:
            self.initialize(rank)

    def __repr__(self) -> str:
        return f"NcclCommunicator(rank={self._rank}, world_size={self._world})"

    def initialize(self, rank: int) -> None:
        """Join as ``rank`` (``ncclCommInitRank``), make the streams, warm up.

        Raises:
            ValueError: ``rank`` out of range, or already initialized.
            ImportError: cupy/torch with CUDA are missing.
        """
        if self._comm is not None:
            raise ValueError(f"{self!r} is initialized already")
        if not 0 <= rank < self._world:
            raise ValueError(f"rank {rank} out of range for a group of {self._world}")
        cupy, nccl, torch = _modules()
        if self._device is None:
            self._device = torch.cuda.current_device()
        self._torch = torch
        with cupy.cuda.Device(self._device):
            self._comm = nccl.NcclCommunicator(self._world, self._uid, rank)
        self._nccl = nccl
        self._rank = rank
        self._streams = {k: torch.cuda.Stream(device=self._device) for k in ("send", "recv", "coll")}
        if self._warm_up:
            self._warm()

    def _warm(self) -> None:
        torch = self._torch
        one = torch.zeros(1, device=self._device)
        self.allreduce(one, one)
        peers = [p for p in range(self._world) if p != self._rank]
        if peers:
            self.exchange([(one, p) for p in peers], [((1,), torch.float32, p, None) for p in peers])

    def get_rank(self) -> int | None:
        return self._rank

    def get_world_size(self) -> int:
        return self._world

    def get_transport_name(self) -> str:
        return "nccl"

    @property
    def send_stream(self) -> Any:
        return self._streams["send"] if self._comm is not None else None

    @property
    def recv_stream(self) -> Any:
        return self._streams["recv"] if self._comm is not None else None

    # --- point to point ---------------------------------------------------------

    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        """Queue ``tensor`` (on this device) for ``peer_rank``; returns once queued."""
        self.send_each(tensor, [peer_rank], timeout_s)

    def send_each(self, tensor: Any, peer_ranks: list[int], timeout_s: float | None = None) -> None:
        """One send of ``tensor`` per peer, grouped (never deadlocks on the order)."""
        self.exchange([(tensor, p) for p in peer_ranks], [], timeout_s)

    def send_batch(self, sends: list[tuple[Any, int]], timeout_s: float | None = None) -> None:
        """Every ``(tensor, peer)`` as one NCCL group; returns once queued."""
        self.exchange(sends, [], timeout_s)

    def recv_batch(
        self,
        recvs: list[tuple[tuple[int, ...], Any, int, Allocator | None]],
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Every ``(shape, dtype, peer, allocator)`` as one NCCL group, complete on return."""
        return self.exchange([], recvs, timeout_s)

    def recv_batch_queued(
        self,
        recvs: list[tuple[tuple[int, ...], Any, int, Allocator | None]],
        timeout_s: float | None = None,
    ) -> tuple[list[Any], Any]:
        """``recv_batch`` queued on the receive stream, not waited for: the tensors and
        ``wait()``, which polls for their arrival as ``recv_batch`` does (the same bound,
        counted from the call to ``wait``) and then makes the caller's stream wait for
        them. Until ``wait()`` returns, the tensors must not be read.

        Raises:
            ValueError: a bad peer rank, or an allocator's tensor not on this device.
            ChannelTimeout (from ``wait``): they did not arrive in time (aborted).
        """
        out = self._issue([], recvs)
        if not out:
            return [], lambda: None
        recv_s = self._streams["recv"]
        for buf, _ in out:
            # Dropped before wait() (a teardown mid-execution), a buffer must not be
            # handed out again by the caching allocator while NCCL may still write it.
            buf.record_stream(recv_s)
        event = self._torch.cuda.Event()
        event.record(recv_s)
        peers = sorted({p for _, p in out})

        def wait() -> None:
            self._wait_event(event, timeout_s, f"recv from rank(s) {peers}")
            self._torch.cuda.current_stream(self._device).wait_event(event)

        return [buf for buf, _ in out], wait

    def recv(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        peer_rank: int,
        allocator: Allocator | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The next tensor from ``peer_rank``, complete when this returns.

        Raises:
            ChannelTimeout: it did not arrive in time (the communicator is aborted).
        """
        return self.exchange([], [(shape, dtype, peer_rank, allocator)], timeout_s)[0]

    def exchange(
        self,
        sends: list[tuple[Any, int]],
        recvs: list[tuple[tuple[int, ...], Any, int, Allocator | None]],
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Sends ``(tensor, peer)`` and receives ``(shape, dtype, peer, allocator)`` as
        one NCCL group; returns the received tensors once they are complete.

        Raises:
            ValueError: a bad peer rank, or a tensor not on this device.
            ChannelTimeout: the receives did not complete in time (aborted).
        """
        out = self._issue(sends, recvs)
        if out:
            recv_s = self._streams["recv"]
            self._wait(recv_s, timeout_s, f"recv from rank(s) {sorted({p for _, p in out})}")
            torch = self._torch
            torch.cuda.current_stream(self._device).wait_stream(recv_s)
        return [buf for buf, _ in out]

    def _issue(
        self,
        sends: list[tuple[Any, int]],
        recvs: list[tuple[tuple[int, ...], Any, int, Allocator | None]],
    ) -> list[tuple[Any, int]]:
        """Queue the sends and receives as one NCCL group on their streams (after the
        caller's stream's work so far); the receive buffers, with their peers."""
        self._check_open()
        torch, nccl = self._torch, self._nccl
        current = torch.cuda.current_stream(self._device)
        send_s, recv_s = self._streams["send"], self._streams["recv"]
        out = []
        for shape, dtype, peer, allocator in recvs:
            self._check_peer(peer)
            buf = (
                allocator(tuple(shape), dtype)
                if allocator
                else torch.empty(shape, dtype=dtype, device=self._device)
            )
            self._check_device(buf, "recv")
            out.append((buf, peer))
        ready = []
        for tensor, peer in sends:
            self._check_peer(peer)
            self._check_device(tensor, "send")
            ready.append((tensor.detach().contiguous(), peer))  # a copy runs on `current`
        # Only now: the copies above are on `current` too, and the sends must follow them.
        send_s.wait_stream(current)
        recv_s.wait_stream(current)
        nccl.groupStart()
        try:
            for t, peer in ready:
                kind, per = _nccl_type(t.dtype, False)
                self._comm.send(t.data_ptr(), t.numel() * per, kind, peer, send_s.cuda_stream)
                t.record_stream(send_s)
            for buf, peer in out:
                kind, per = _nccl_type(buf.dtype, False)
                self._comm.recv(buf.data_ptr(), buf.numel() * per, kind, peer, recv_s.cuda_stream)
        finally:
            nccl.groupEnd()
        return out

    # --- collectives ------------------------------------------------------------

    def allreduce(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        op = ReduceOp.of(op)
        kind, _ = _nccl_type(send_buf.dtype, True)
        self._collective(
            "allreduce", timeout_s, send_buf, recv_buf, send_buf.numel(),
            lambda s, r, st: self._comm.allReduce(s, r, send_buf.numel(), kind, _NCCL_OPS[op], st),
        )  # fmt: skip

    def allgather(self, send_buf: Any, recv_buf: Any, timeout_s: float | None = None) -> None:
        kind, per = _nccl_type(send_buf.dtype, False)
        n = send_buf.numel() * per
        self._collective(
            "allgather", timeout_s, send_buf, recv_buf, send_buf.numel() * self._world,
            lambda s, r, st: self._comm.allGather(s, r, n, kind, st),
        )  # fmt: skip

    def reducescatter(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        op = ReduceOp.of(op)
        kind, _ = _nccl_type(send_buf.dtype, True)
        m = recv_buf.numel()
        if send_buf.numel() != m * self._world:
            raise ValueError(
                f"reducescatter: send_buf has {send_buf.numel()} elements, recv_buf {m}: send_buf must "
                f"have {self._world} x recv_buf's"
            )
        self._collective(
            "reducescatter", timeout_s, send_buf, recv_buf, m,
            lambda s, r, st: self._comm.reduceScatter(s, r, m, kind, _NCCL_OPS[op], st),
        )  # fmt: skip

    def broadcast(self, buf: Any, root_rank: int, timeout_s: float | None = None) -> None:
        if not 0 <= root_rank < self._world:
            raise ValueError(f"root_rank {root_rank} out of range for a group of {self._world}")
        kind, per = _nccl_type(buf.dtype, False)
        n = buf.numel() * per
        self._collective(
            "broadcast", timeout_s, buf, buf, buf.numel(),
            lambda s, r, st: self._comm.broadcast(s, r, n, kind, root_rank, st),
        )  # fmt: skip

    def _collective(
        self, name: str, timeout_s: float | None, send_buf: Any, recv_buf: Any, n_recv: int, run: Any
    ) -> None:
        self._check_open()
        self._check_device(send_buf, name)
        self._check_device(recv_buf, name)
        if send_buf.dtype != recv_buf.dtype:
            raise TypeError(f"{name}: send_buf is {send_buf.dtype} but recv_buf is {recv_buf.dtype}")
        if recv_buf.numel() != n_recv:
            raise ValueError(f"{name}: recv_buf has {recv_buf.numel()} elements, expected {n_recv}")
        torch = self._torch
        current, coll = torch.cuda.current_stream(self._device), self._streams["coll"]
        send = send_buf.detach().contiguous()  # a copy runs on `current`: before the wait
        recv = (
            recv_buf
            if recv_buf.is_contiguous()
            else torch.empty_like(recv_buf, memory_format=torch.contiguous_format)
        )
        coll.wait_stream(current)
        run(send.data_ptr(), recv.data_ptr(), coll.cuda_stream)
        send.record_stream(coll)
        self._wait(coll, timeout_s, name)
        current.wait_stream(coll)
        if recv is not recv_buf:
            recv_buf.copy_(recv)

    # --- waiting and ending -----------------------------------------------------

    def _wait(self, stream: Any, timeout_s: float | None, what: str) -> None:
        """Until ``stream``'s work so far completes; abort past the deadline."""
        event = self._torch.cuda.Event()
        event.record(stream)
        self._wait_event(event, timeout_s, what)

    def _wait_event(self, event: Any, timeout_s: float | None, what: str) -> None:
        """Until ``event`` completes; abort past the deadline."""
        deadline = deadline_after(self.timeout_s if timeout_s is None else timeout_s)
        pause, fast_until = _POLL_S, time.monotonic() + _POLL_FAST_S
        while not event.query():
            if self._aborted:
                raise ChannelClosed(f"{self!r} was aborted")
            try:
                self._comm.check_async_error()
            except Exception as e:  # cupy's NcclError: a peer failed or aborted
                self.abort()
                raise ChannelBroken(f"{self!r}: NCCL failed in {what}: {e}") from e
            if remaining(deadline) <= 0:
                self.abort()
                raise ChannelTimeout(
                    f"{self!r}: timed out in {what}: a member never joined; the communicator is aborted"
                )
            time.sleep(pause)
            if time.monotonic() >= fast_until:
                pause = min(2 * pause, _POLL_MAX_S)

    def _check_open(self) -> None:
        if self._aborted:
            raise ChannelClosed(f"{self!r} was aborted")
        if self._comm is None:
            raise ChannelClosed(f"{self!r}: not initialized, or destroyed")

    def _check_peer(self, peer: int) -> None:
        if not 0 <= peer < self._world:
            raise ValueError(f"rank {self._rank}: peer {peer} out of range 0..{self._world - 1}")

    def _check_device(self, tensor: Any, what: str) -> None:
        if tensor.device.type != "cuda" or tensor.device.index != self._device:
            raise ValueError(
                f"{what}: the tensor is on {tensor.device}, this member's device is cuda:{self._device}"
            )

    def abort(self) -> None:
        """``ncclCommAbort``: in-flight operations end; every later call raises ChannelClosed."""
        with self._lock:
            if self._aborted or self._comm is None:
                self._aborted = True
                return
            self._aborted = True
            self._comm.abort()

    def destroy(self) -> None:
        """``ncclCommDestroy`` (nothing after an abort, which freed it). Idempotent."""
        with self._lock:
            comm, self._comm = self._comm, None
            if comm is not None and not self._aborted:
                comm.destroy()
