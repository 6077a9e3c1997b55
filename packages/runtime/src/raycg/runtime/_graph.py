"""The caller's side of a compiled graph: set up, execute, fetch, tear down.

Setup creates every shared-memory ring in this process (the owner of all of them),
hands each actor its part of the plan in one ``__ray_call__``, and returns when every
actor is ready. After that the hot path is: ``execute`` writes ``(args, kwargs)`` into
the input ring; ``get`` reads the output rings in execution order, buffering results of
executions nobody asked for yet, so gets may come in any order.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.core.generated.common_pb2 import ActorDiedErrorContext  # type: ignore[attr-defined]
from ray.exceptions import ActorDiedError, RayCgraphCapacityExceeded, RayChannelError

from raycg.proto import ActorSetup, ActorStatus, ChannelPlan, Plan, ShmEndpoint, Transport
from raycg.transports import (
    ChannelError,
    ChannelTimeout,
    ShmRing,
    ShmRingReader,
    ShmRingWriter,
    SlotPinned,
    open_reader,
    open_writer,
)
from raycg.transports._deadline import deadline_after, remaining

from . import _errors, _monitor
from ._executor import _project, running_graphs, setup_actor, teardown_actor
from ._ref import GraphRef

SETUP_TIMEOUT_S = 60.0
TEARDOWN_TIMEOUT_S = 10.0

_TAKEN = object()  # a result already returned (or dropped)

# Graphs alive in this process: torn down at exit so that no executor outlives us.
_LIVE: weakref.WeakSet[CompiledGraph] = weakref.WeakSet()


def ray_timeout(seconds: float) -> float | None:
    """Ray's spelling (-1 forever, 0 immediate, else seconds) to the transports' one."""
    return None if seconds < 0 else seconds


class _Resources:
    """What a graph holds in this process, closable without the graph object (so that a
    finalizer can run it when the last reference to the graph is dropped)."""

    def __init__(self) -> None:
        self.rings: list[ShmRing] = []
        self.endpoints: list[Any] = []

    def close(self) -> None:
        # Closing a ring sets its shared closed flag: every executor blocked on it, in
        # any process, wakes with ChannelClosed and exits. No Ray call needed.
        for ep in self.endpoints:
            ep.close()
        for ring in self.rings:
            ring.close()
        self.endpoints.clear()
        self.rings.clear()


class CompiledGraph:
    """A plan set up on its actors, ready to execute. Built by ``raycg.compile``."""

    def __init__(self, plan: Plan, actors: dict[str, ActorHandle]):
        self.graph_id = plan.graph_id
        self._plan = plan
        self._actors = actors
        self._pid = os.getpid()
        opts = plan.options
        self._submit_timeout_s = ray_timeout(opts.submit_timeout_s)
        self._get_timeout_s = ray_timeout(opts.get_timeout_s)
        self._max_inflight = max(1, opts.max_inflight_executions)
        self._max_buffered = max(1, opts.max_buffered_results)
        self._nout = len(plan.outputs)
        self._lock = threading.RLock()
        self._next_exec = 0  # index of the next execute()
        self._next_read = 0  # index of the next execution to read from the output rings
        self._partial: list[Any] = []  # output channel values read so far for _next_read
        self._results: dict[int, list[Any]] = {}
        self._dropped: dict[int, set[int]] = {}
        self._torn_down = False
        self._closing = False
        self._teardown_reason: str | None = None
        self._processes: dict[str, tuple[int, int]] = {}  # actor id -> (pid, start time)
        self._died: ActorDiedError | None = None  # set by the monitor thread
        self._died_at_exec = 0  # executions submitted before the death
        self._died_reported = False
        self._death_lock = threading.Lock()
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        try:
            self._setup()
        except BaseException:
            self.teardown(reason="setup failed")
            raise
        _LIVE.add(self)
        _monitor.watch(self)

    # -- setup ------------------------------------------------------------------------

    def _setup(self) -> None:
        plan = self._plan
        endpoints: dict[str, list[ShmEndpoint]] = {}
        for ch in plan.channels:
            if ch.transport == Transport.SHM:
                self._create_ring(ch, endpoints)
        self._input = self._open_driver_writer(plan.input_channel_id)
        self._out_channels = list(dict.fromkeys(o.channel_id for o in plan.outputs))
        self._out_readers = [self._open_driver_reader(cid) for cid in self._out_channels]
        self._out_map = [(self._out_channels.index(o.channel_id), list(o.projections)) for o in plan.outputs]
        self._setup_actors(endpoints)

    def _create_ring(self, ch: ChannelPlan, endpoints: dict[str, list[ShmEndpoint]]) -> None:
        ring = ShmRing(ch.num_slots, len(ch.readers), ch.slot_size_bytes, name=ch.label or ch.channel_id)
        self._res.rings.append(ring)
        self._rings = getattr(self, "_rings", {})
        self._rings[ch.channel_id] = ring
        spec = ring.spec
        base = dict(channel_id=ch.channel_id, pid=spec.pid, ctrl_fd=spec.ctrl_fd, num_slots=spec.nslots)
        if ch.writer.WhichOneof("kind") == "actor_id":
            endpoints.setdefault(ch.writer.actor_id, []).append(
                ShmEndpoint(**base, num_readers=spec.nreaders, reader_index=-1)
            )
        for i, r in enumerate(ch.readers):
            if r.WhichOneof("kind") == "actor_id":
                endpoints.setdefault(r.actor_id, []).append(
                    ShmEndpoint(**base, num_readers=spec.nreaders, reader_index=i)
                )

    def _open_driver_writer(self, channel_id: str) -> ShmRingWriter:
        w = open_writer(self._rings[channel_id].spec)
        self._res.endpoints.append(w)
        return w

    def _open_driver_reader(self, channel_id: str) -> ShmRingReader:
        ch = next(c for c in self._plan.channels if c.channel_id == channel_id)
        index = next(i for i, r in enumerate(ch.readers) if r.WhichOneof("kind") == "driver")
        r = open_reader(self._rings[channel_id].spec, index)
        self._res.endpoints.append(r)
        return r

    def _setup_actors(self, endpoints: dict[str, list[ShmEndpoint]]) -> None:
        plan = self._plan
        calls: list[tuple[Any, Any]] = []
        for ap in plan.actors:
            used = {c for t in ap.tasks for c in (*t.inputs, *t.outputs)}
            setup = ActorSetup(
                graph_id=plan.graph_id,
                actor=ap,
                channels=[c for c in plan.channels if c.channel_id in used],
                shm=endpoints.get(ap.actor_id, []),
                options=plan.options,
                driver_pid=self._pid,
            )
            handle = self._actors[ap.actor_id]
            calls.append((ap, handle.__ray_call__.remote(setup_actor, setup.SerializeToString())))
        failures = []
        for ap, ref in calls:
            status = ActorStatus.FromString(ray.get(ref, timeout=SETUP_TIMEOUT_S))
            self._processes[ap.actor_id] = (status.pid, status.pid_start_time)
            if status.state != ActorStatus.READY:
                failures.append(f"{ap.actor_label}: {status.error.message}")
        if failures:
            raise RayChannelError("compiled graph setup failed on " + "; ".join(failures))

    # -- execute and fetch ------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> GraphRef | list[GraphRef]:
        """Submit one execution; returns its ref (a list of refs for a multi-output graph)."""
        with self._lock:
            self._check_usable()
            deadline = deadline_after(self._submit_timeout_s)
            while self._next_exec - self._next_read >= self._max_inflight:
                if len(self._results) >= self._max_buffered:
                    raise RayCgraphCapacityExceeded(
                        f"compiled graph {self.graph_id[:8]}: {self._max_inflight} executions in "
                        f"flight and {len(self._results)} results buffered (max_buffered_results="
                        f"{self._max_buffered}); get some results before executing more"
                    )
                self._read_next_execution(deadline, "execute", copy=True)
            try:
                self._input.write((args, kwargs), remaining(deadline))
            except ChannelError as e:
                if isinstance(e, TypeError):
                    raise
                raise self._fault(e, "execute") from e
            idx = self._next_exec
            self._next_exec += 1
        refs = [GraphRef(self, idx, i) for i in range(self._nout)]
        return refs if self._plan.multi_output else refs[0]

    def _fetch(self, idx: int, out: int, timeout_s: float | None) -> Any:
        with self._lock:
            if idx in self._results:  # read before any failure: still valid
                value = self._results[idx][out]
                self._take(idx, out)
                return value
            self._check_usable(pending=idx)
            if timeout_s is None:
                timeout_s = self._get_timeout_s
            elif timeout_s < 0:
                timeout_s = None
            deadline = deadline_after(timeout_s)
            while idx not in self._results:
                if idx < self._next_read:
                    raise ValueError(f"the result of execution {idx} output {out} was already released")
                if idx >= self._next_exec:
                    raise ValueError(f"execution {idx} was never submitted")
                if idx > self._next_read and len(self._results) >= self._max_buffered:
                    raise RayCgraphCapacityExceeded(
                        f"compiled graph {self.graph_id[:8]}: {len(self._results)} results buffered "
                        f"(max_buffered_results={self._max_buffered}); get earlier results first"
                    )
                # Results of executions nobody asked for yet go to the buffer as
                # copies: a buffered result must never pin the ring.
                self._read_next_execution(deadline, "get", copy=idx != self._next_read)
            row = self._results[idx]
            value = row[out]
            self._take(idx, out)
            return value

    def _read_next_execution(self, deadline: float, what: str, copy: bool) -> None:
        """Read every output ring once for execution ``_next_read`` into the buffer."""
        partial = self._partial
        try:
            while len(partial) < len(self._out_readers):
                reader = self._out_readers[len(partial)]
                self._check_not_pinned_by_us(reader, len(partial))
                partial.append(reader.read(remaining(deadline), copy=copy))
        except ChannelError as e:
            raise self._fault(e, what) from e
        row = [
            v if isinstance(v, ray.exceptions.RayTaskError) or not proj else _project(v, proj, False)
            for v, proj in ((partial[c], p) for c, p in self._out_map)
        ]
        idx = self._next_read
        # Empty the list in place: a traceback of an earlier failed read may still
        # reference it, and must not keep (and pin) this execution's values.
        partial.clear()
        self._next_read += 1
        self._results[idx] = row
        for out in self._dropped.pop(idx, ()):
            self._take(idx, out)

    def _take(self, idx: int, out: int) -> None:
        row = self._results[idx]
        row[out] = _TAKEN
        if all(v is _TAKEN for v in row):
            del self._results[idx]

    def _release(self, idx: int, out: int) -> None:
        """A ref was dropped without a get: forget its result (now or when it comes)."""
        if self._torn_down:
            return
        with self._lock:
            if idx in self._results:
                self._take(idx, out)
            elif idx >= self._next_read:
                self._dropped.setdefault(idx, set()).add(out)

    def _unwrap(self, value: Any) -> Any:
        return _errors.raise_if_task_error(value)

    def _check_not_pinned_by_us(self, reader: ShmRingReader, channel_index: int) -> None:
        """Refuse to wait for a value the writer cannot write because a zero-copy value
        we hold pins the slot it needs (waiting would only end in a timeout)."""
        blocking_seq = reader.next_seq - reader.spec.nslots
        if blocking_seq < 0 or not reader.pinned():
            return
        for seq, desc in reader.pinned():
            if seq == blocking_seq:
                outs = [i for i, (c, _) in enumerate(self._out_map) if c == channel_index]
                raise RayCgraphCapacityExceeded(
                    f"compiled graph {self.graph_id[:8]}: execution {reader.next_seq} cannot "
                    f"complete: its output slot is pinned by {desc}, a zero-copy result this "
                    f"process still holds from the ref of execution {seq} (output {outs[0]}). "
                    "Drop that value, or copy it (np.array(value)), and execute again"
                )

    def _fault(self, e: ChannelError, what: str) -> Exception:
        """The exception for a channel error met while doing ``what``.

        A timeout leaves the graph running. Anything else is a fault: if an actor's
        process is gone (the monitor may not have polled yet) it is that actor's death;
        otherwise a broken channel. Either way the graph is torn down.
        """
        if isinstance(e, ChannelTimeout) and not isinstance(e, SlotPinned):
            return _errors.to_ray_error(e, f"{what} on graph {self.graph_id[:8]}")
        if self._closing and self._died is None:  # teardown (another thread) woke us
            return _errors.torn_down_error(self.graph_id, self._teardown_reason)
        if self._died is None and not self._torn_down:
            dead = _monitor.first_dead(self._processes)
            if dead is not None:
                self._on_actor_died(dead)
        if self._died is not None:
            return self._death_error()
        err = _errors.to_ray_error(e, f"{what} on graph {self.graph_id[:8]}")
        if not isinstance(e, SlotPinned):
            self.teardown(reason=f"{type(e).__name__}: {e}")
        return err

    def _death_error(self) -> ActorDiedError:
        assert self._died is not None
        return ActorDiedError(self._died_context)  # a fresh instance: clean traceback

    def _check_usable(self, pending: int | None = None) -> None:
        if self._died is not None:
            # Pending executions and the first call after the death: ActorDiedError;
            # later calls: RayChannelError caused by it (API.md, Failures).
            if pending is not None and pending < self._died_at_exec:
                raise self._death_error()
            if not self._died_reported:
                self._died_reported = True
                raise self._death_error()
            raise RayChannelError(
                f"compiled graph {self.graph_id[:8]} was torn down because an actor died"
            ) from self._death_error()
        if self._torn_down:
            raise _errors.torn_down_error(self.graph_id, self._teardown_reason)
        if os.getpid() != self._pid:
            raise RayChannelError(
                f"compiled graph {self.graph_id[:8]} was compiled by process {self._pid}; "
                f"only that process may execute it (this is {os.getpid()})"
            )

    # -- failures (called by the monitor thread) ---------------------------------------

    def _dead_actor(self) -> str | None:
        return None if self._torn_down else _monitor.first_dead(self._processes)

    def _on_actor_died(self, actor_id: str) -> None:
        """An actor's process is gone: fail pending and next calls with ActorDiedError,
        wake every waiter, and tear the graph down (the other actors stay alive)."""
        with self._death_lock:
            if self._died is not None:
                return
            label = next((a.actor_label for a in self._plan.actors if a.actor_id == actor_id), actor_id)
            pid = self._processes.get(actor_id, (0, 0))[0]
            self._died_context = ActorDiedErrorContext(
                actor_id=bytes.fromhex(actor_id),
                class_name=label.split("(", 1)[0],
                pid=pid,
                error_message=(
                    f"The actor {label} of compiled graph {self.graph_id[:8]} died (its process "
                    f"{pid} exited); the graph was torn down. Its other actors are alive."
                ),
            )
            self._died_at_exec = self._next_exec
            self._died = ActorDiedError(self._died_context)
        self.teardown(reason=f"actor {label} died")

    # -- teardown ---------------------------------------------------------------------

    def teardown(self, reason: str | None = None) -> None:
        """Stop every executor and free every channel. Idempotent. The actors stay alive
        and can serve ordinary calls or a new graph at once."""
        if self._torn_down:
            return
        self._closing = True
        # Close the rings before taking the lock: a get or execute blocked in another
        # thread holds it, and closing is what wakes it (with ChannelClosed).
        for ring in list(self._res.rings):
            ring.close()
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
            self._teardown_reason = reason
            _monitor.unwatch(self)
            self._res.close()
            self._results.clear()
            self._partial = []
            # Drop our endpoints: their mappings (and the fd each mmap keeps) go now,
            # not when the graph object is collected. Nothing uses them after this.
            self._input = None  # type: ignore[assignment]
            self._out_readers = []
            self._rings = {}
        _LIVE.discard(self)
        alive = [
            h
            for aid, h in self._actors.items()
            if _monitor.first_dead({aid: self._processes.get(aid, (0, 0))}) is None
        ]
        refs: list[Any] = [
            h.__ray_call__.remote(teardown_actor, self.graph_id, TEARDOWN_TIMEOUT_S) for h in alive
        ]
        for ref in refs:
            try:
                ray.get(ref, timeout=TEARDOWN_TIMEOUT_S + 5)
            except Exception:
                pass  # died meanwhile: nothing left to stop there

    def __reduce__(self) -> Any:
        raise TypeError(
            f"compiled graph {self.graph_id[:8]} cannot be pickled or sent to another process: "
            "only the process that compiled it may execute it"
        )

    def __del__(self) -> None:
        pass  # the weakref finalizer closes the rings; see _Resources.close


def close_all_graphs() -> None:
    """At interpreter exit: close every live graph's rings (no Ray calls: Ray may be
    shutting down). Executors see their channels closed and exit on their own."""
    for g in list(_LIVE):
        g._torn_down = True
        g._res.close()


def actor_running_graphs(actor: ActorHandle) -> list[str]:
    """The graph ids whose executor threads run on ``actor`` (for tests and debugging)."""
    return ray.get(actor.__ray_call__.remote(running_graphs))  # type: ignore[no-any-return]
