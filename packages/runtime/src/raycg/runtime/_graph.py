"""The caller's side of a compiled graph: set up, execute, fetch, tear down.

After setup (``_setup.py``) the hot path is: ``execute`` writes ``(args, kwargs)`` into
the input ring; ``get`` reads the output rings in execution order (``_results.py``),
buffering results of executions nobody asked for yet, so gets may come in any order and
from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayChannelError

from raycg.proto import ActorStatus, Plan, Teardown
from raycg.transports import (
    Channel,
    ChannelError,
    ChannelTimeout,
    ValueNotSerializable,
    deadline_after,
    remaining,
)

from . import _aio, _communicators, _crossnode, _errors, _monitor, _setup, _stats_report, _tensor_edges
from ._actor import running_graphs, teardown_actor
from ._failures import CauseUnknown, Failures, describe_failure, ray_timeout
from ._inputs import InputSignature
from ._projection import compile_projections
from ._ref import GraphFuture, GraphRef, install_get_hook
from ._remote_death import RemoteDeath
from ._result_buffer import Fault
from ._results import Results

TEARDOWN_TIMEOUT_S = 10.0

# Graphs alive in this process: their rings are closed at exit, so no executor outlives us.
_LIVE: weakref.WeakSet[CompiledGraph] = weakref.WeakSet()


def _weak_fault(graph: CompiledGraph) -> Fault:
    """``graph._fault`` for its result buffer, without a reference back to the graph:
    a bound method would make a cycle (graph -> results -> graph), and a dropped graph
    would then be torn down only at some later collection, not when dropped."""
    ref = weakref.ref(graph)

    def fault(e: ChannelError, what: str) -> Exception:
        g = ref()
        return _errors.to_ray_error(e, what) if g is None else g._fault(e, what)

    return fault


class CompiledGraph(Failures):
    """A plan set up on its actors, ready to execute. Built by ``raycg.compile``."""

    def __init__(self, plan: Plan, actors: dict[str, ActorHandle], ir_graph: Any = None):
        self.graph_id = plan.graph_id
        self._name = f"compiled graph {plan.graph_id[:8]}"
        self._plan = plan
        self._actors = actors
        self._pid = os.getpid()
        opts = plan.options
        self._submit_timeout_s = ray_timeout(opts.submit_timeout_s)
        self._get_timeout_s = ray_timeout(opts.get_timeout_s)
        self._max_inflight = max(1, opts.max_inflight_executions)
        self._asyncio = opts.enable_asyncio
        # Re-entrant: a fault met while submitting tears the graph down from inside.
        self._submit_lock = threading.RLock()
        self._next_exec = 0
        self._torn_down = False
        self._closing = False
        self._teardown_reason: str | None = None
        self._executor_failures: list[str] = []  # what failed executors said, at teardown
        self._processes: dict[str, tuple[int, int]] = {}  # actor id -> (pid, start time)
        self._died: ActorDiedError | None = None  # set once, by whoever sees the death
        self._died_context: Any = None
        self._died_at_exec = 0  # executions submitted before the death
        self._died_reported = False
        self._death_lock = threading.Lock()
        self._remote_death = RemoteDeath.of(plan)  # actors on other nodes: asked on a fault
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._results: Results | None = None
        self._res = _setup.Resources()
        # A user's Communicator instances live in the IR, not in the plan (a protobuf).
        self._res.communicators = _communicators.instances(ir_graph)
        weakref.finalize(self, self._res.close)  # dropped without teardown: stop executors
        try:
            self._setup()
        except ChannelError as e:  # ours never reach the caller unmapped
            self.teardown(reason="setup failed")
            raise _errors.to_ray_error(e, f"setting up {self._name}") from e
        except BaseException:
            self.teardown(reason="setup failed")
            raise
        _LIVE.add(self)
        _monitor.watch(self)
        install_get_hook()

    @property
    def plan(self) -> Plan:
        """The plan this graph runs (``raycg.proto.Plan``): print it to see every
        channel, its transport and size, and each actor's schedule."""
        return self._plan

    def _setup(self) -> None:
        plan, res = self._plan, self._res
        self._inputs = InputSignature.of(plan)
        endpoints = _setup.create_rings(plan, res)
        cross = _crossnode.set_up(plan, self._actors, res, endpoints)
        self._input: Channel = _crossnode.open_input(plan, res, cross)
        out_channels = list(dict.fromkeys(o.channel_id for o in plan.outputs))
        readers = []
        for cid in out_channels:
            index = _setup.driver_reader_index(plan, cid)
            readers.append(_crossnode.open_output_reader(plan, res, cross, cid, index))
            res.endpoints.append(readers[-1])
        out_map = [
            (out_channels.index(o.channel_id), compile_projections(o.projections)) for o in plan.outputs
        ]
        self._results = Results(
            self._name, readers, out_map, max(1, plan.options.max_buffered_results), _weak_fault(self)
        )
        processes = _setup.setup_actors(plan, self._actors, endpoints, cross.grpc, res.comm_specs)
        self._processes = _crossnode.local_processes(plan, processes)

    # -- execute ----------------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> GraphRef | list[GraphRef]:
        """Submit one execution; return its ref (a list of refs for a multi-output graph).

        Past ``max_inflight_executions`` it first drains finished executions into the
        result buffer, waiting up to ``submit_timeout`` for them.

        Raises:
            ValueError: the arguments do not fit what the graph's InputNode is used for
                (nothing was sent).
            RayCgraphCapacityExceeded: the result buffer is full too, or the ring is
                blocked by a zero-copy result this process holds (named).
            RayChannelTimeoutError: no room within ``submit_timeout``.
            ActorDiedError, RayChannelError: see docs/api.md's Failures table.
        """
        self._inputs.check(args, kwargs)
        idx = self._submit(args, kwargs, self._submit_timeout_s)
        return self._refs(idx, GraphRef)

    async def execute_async(self, *args: Any, **kwargs: Any) -> GraphFuture | list[GraphFuture]:
        """Like execute, from an event loop (``enable_asyncio=True``): returns once the
        input is submitted, without blocking the loop; ``await`` the future(s)."""
        if not self._asyncio:
            raise ValueError(
                f"Use execute if enable_asyncio=False. {self._name} was compiled without "
                "enable_asyncio=True: compile it with enable_asyncio=True to use execute_async"
            )
        self._inputs.check(args, kwargs)
        fault = None
        try:
            # Fast path: room right now. Never wait for the lock here: a worker thread
            # may hold it while it waits for the oldest execution to finish.
            idx = _aio.fast(self._submit, args, kwargs, 0.0, lock_timeout_s=0.0)
        except ray.exceptions.RayChannelTimeoutError:
            idx = await self._in_pool(self._submit, args, kwargs, self._submit_timeout_s)
        except _aio.Deferred as d:
            fault = d.error, d.what  # handled below, out of this block: no context to carry
        if fault is not None:
            await _aio.off_loop(self._submit_failed, *fault)  # raises
        return self._refs(idx, GraphFuture)

    def _submit(
        self, args: tuple, kwargs: dict, timeout_s: float | None, lock_timeout_s: float | None = None
    ) -> int:
        """Write one execution's input; ``timeout_s`` bounds the whole call, waiting for
        the lock included (``lock_timeout_s``, if given, bounds that wait alone)."""
        deadline = deadline_after(timeout_s)
        wait_s = remaining(deadline) if lock_timeout_s is None else lock_timeout_s
        if not self._submit_lock.acquire(timeout=-1 if math.isinf(wait_s) else wait_s):
            self._check_usable()
            raise self._fault(ChannelTimeout("another thread is submitting (it waits for room)"), "execute")
        try:
            try:
                return self._submit_locked(args, kwargs, deadline)
            finally:
                self._submit_lock.release()
        except CauseUnknown as e:
            raise self._resolved(e) from e.error

    def _submit_failed(self, error: ChannelError, what: str) -> None:
        """Off the loop: handle a fault that ``execute_async``'s fast path met, and
        raise what ``_submit`` would have raised for it."""
        exc = self._fault(error, what)
        if isinstance(exc, CauseUnknown):
            raise self._resolved(exc) from error
        raise exc from error

    def _submit_locked(self, args: tuple, kwargs: dict, deadline: float) -> int:
        self._check_usable()
        results = self._results
        assert results is not None
        while self._next_exec - results.next_read >= self._max_inflight:
            results.drain_one(deadline, self._next_exec, self._max_inflight)
        try:
            self._input.write((args, kwargs), remaining(deadline))
        except ValueNotSerializable as e:  # nothing was sent; a plain TypeError, as Ray's
            raise TypeError(f"execute on {self._name}: {e}") from None
        except ChannelError as e:
            raise self._fault(e, "execute") from e
        idx = self._next_exec
        self._next_exec += 1
        return idx

    def _refs(self, idx: int, cls: type) -> Any:
        multi = self._plan.multi_output
        refs = [cls(self, idx, i, multi) for i in range(len(self._plan.outputs))]
        return refs if multi else refs[0]

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor | None:
        """The graph's pool, made on first use; None once the graph is closing (under
        the lock ``_close`` sets that under, so that no pool is made after it ran)."""
        with self._death_lock:
            if self._closing:
                return None
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    4, thread_name_prefix=f"raycg-{self.graph_id[:8]}-async"
                )
            return self._pool

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await ``fn(*args)`` on the graph's pool; on a thread of its own once the pool
        is shut down (the graph was torn down meanwhile: ``fn`` raises at once)."""
        pool = self._executor()
        if pool is not None:
            try:
                fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            except RuntimeError:  # shut down since _executor() returned it
                pass
            else:
                return await fut
        return await _aio.off_loop(fn, *args)

    # -- fetch (what refs call) -------------------------------------------------------

    def _fetch(self, idx: int, out: int, timeout_s: float | None) -> Any:
        if timeout_s is None:
            timeout_s = self._get_timeout_s
        elif timeout_s < 0:
            timeout_s = None
        self._check_usable(pending=idx)
        results = self._results
        assert results is not None
        try:
            return results.fetch(idx, out, deadline_after(timeout_s))
        except ValueError:
            self._check_usable(pending=idx)
            raise
        except RayChannelError as e:
            self._raise_fetch_error(e, idx)

    def _fetch_many(self, wanted: list[tuple[int, int]], timeout_s: float | None) -> dict[int, Any]:
        """``ray.get`` of several refs: what ``Results.fetch_many`` takes of ``wanted``,
        by place in the list; it stops at the first failure. Faults as in ``_fetch``."""
        if timeout_s is None:
            timeout_s = self._get_timeout_s
        elif timeout_s < 0:
            timeout_s = None
        first = min(idx for idx, _ in wanted)
        self._check_usable(pending=first)
        results = self._results
        assert results is not None
        try:
            return results.fetch_many(wanted, deadline_after(timeout_s))
        except ValueError:
            self._check_usable(pending=first)
            raise
        except RayChannelError as e:
            self._raise_fetch_error(e, first)

    def _raise_fetch_error(self, e: RayChannelError, first: int) -> NoReturn:
        """What a get of executions from ``first`` on raises for ``e``: the death of an
        actor if it happened before ``first`` was submitted, else what ``e`` is."""
        err = self._resolved(e)
        if self._died is not None and first < self._died_at_exec:
            raise self._death_error() from None
        if err is e:
            raise e
        raise err from e.error if isinstance(e, CauseUnknown) else e

    async def _fetch_async(self, idx: int, out: int) -> Any:
        """``await fut``: the value (a task's failure raised), as ``GraphRef.get``
        returns it, with nothing that blocks on the loop's thread (see ``_aio``)."""
        fault = None
        try:
            value = _aio.fast(self._fetch, idx, out, 0.0)  # fast path: already there
        except ray.exceptions.RayChannelTimeoutError:
            value = await self._in_pool(self._fetch, idx, out, None)
        except _aio.Deferred as d:
            fault = d.error, d.what  # handled below, out of this block: no context to carry
        if fault is not None:
            await _aio.off_loop(self._fetch_failed, idx, *fault)  # raises
        if _tensor_edges.broke_a_promise(value):  # the teardown _unwrap does, off the loop
            await _aio.off_loop(self._unwrap, value)  # raises
        return _errors.raise_if_task_error(value)

    def _fetch_failed(self, idx: int, error: ChannelError, what: str) -> NoReturn:
        """Off the loop: handle a fault that ``await fut``'s fast path met, and raise
        what ``_fetch`` would have raised for it."""
        exc = self._fault(error, what)
        exc.__cause__ = error
        if isinstance(exc, RayChannelError):
            self._raise_fetch_error(exc, idx)
        raise exc

    def _release(self, idx: int, out: int) -> None:
        if not self._closing and self._results is not None:
            self._results.release(idx, out)

    def _unwrap(self, value: Any) -> Any:
        if _tensor_edges.broke_a_promise(value):  # as Ray: a broken promise ends the graph
            self.teardown(reason=f"a tensor type hint's promise was broken: {value.cause}")
        return _errors.raise_if_task_error(value)

    # -- teardown ---------------------------------------------------------------------

    def teardown(self, kill_actors: bool = False, *, reason: str | None = None) -> None:
        """Stop every executor and free every channel. Idempotent. The actors stay alive
        and can serve ordinary calls or a new graph at once.

        Args:
            kill_actors: then kill the graph's actors (``ray.kill``), as Ray's
                ``teardown(kill_actors=True)`` does; also when already torn down.
            reason: why (internal: a fault's teardown), for later calls' errors.
        """
        self._close(reason)
        if kill_actors:
            for handle in self._actors.values():
                ray.kill(handle)

    @property
    def is_teardown(self) -> bool:
        """Whether the graph is torn down (or being torn down), as Ray's property."""
        return self._closing

    def get_id(self) -> str:
        """The graph's unique id (hex), as Ray's ``CompiledDAG.get_id()``."""
        return self.graph_id

    def __str__(self) -> str:
        return f"CompiledGraph({self.graph_id})"

    def get_channel_details(self, channel: Any, downstream_actor_id: str) -> str:
        """Ray's helper for its own drawing, which takes a Ray channel object: raycg's
        channels are not Ray's.

        Raises:
            NotImplementedError: always; use ``visualize(channel_details=True)`` or
                ``graph.plan.channels`` instead.
        """
        raise NotImplementedError(
            "CompiledGraph.get_channel_details() takes one of Ray's channel objects, and raycg's "
            "channels are its own; use graph.visualize(channel_details=True) to draw every channel's "
            "details, or read graph.plan.channels (raycg.proto.ChannelPlan: id, transport, writer, "
            "readers, slots)"
        )

    def _close(self, reason: str | None) -> None:
        with self._death_lock:
            if self._closing:
                return
            self._closing = True
            self._teardown_reason = reason
        _monitor.unwatch(self)
        # Closing the rings first wakes any thread blocked in execute or get.
        self._res.close_rings()
        if self._results is not None:
            self._results.clear()
        with self._submit_lock:
            self._torn_down = True
            self._res.close()
            self._input = None  # type: ignore[assignment]
        _LIVE.discard(self)
        if self._pool is not None:
            # Not cancel_futures: a coroutine awaiting a cancelled future would see
            # CancelledError, not the graph's error; queued calls raise that at once.
            self._pool.shutdown(wait=False)
        self._stop_executors()
        if self._executor_failures:  # later calls say why, too
            self._teardown_reason = self._failures_said(reason or "a channel failed")

    def _stop_executors(self) -> None:
        """Send every live actor a ``Teardown``; keep what failed executors reported."""
        dead = _monitor.dead_actors(self._processes)  # nothing left to stop there
        alive = [(aid, h) for aid, h in self._actors.items() if aid not in dead]
        msg = Teardown(
            graph_id=self.graph_id, reason=self._teardown_reason or "", timeout_s=TEARDOWN_TIMEOUT_S
        )
        payload = msg.SerializeToString()
        calls: list[tuple[str, Any]] = [
            (aid, h.__ray_call__.remote(teardown_actor, payload)) for aid, h in alive
        ]
        labels = {a.actor_id: a.actor_label for a in self._plan.actors}
        for aid, ref in calls:
            try:
                status = ActorStatus.FromString(ray.get(ref, timeout=TEARDOWN_TIMEOUT_S + 5))
            except Exception:
                continue  # died meanwhile: nothing left to stop there
            if status.state == ActorStatus.FAILED:
                self._executor_failures.append(describe_failure(labels.get(aid, aid), status))

    # -- observability ----------------------------------------------------------------

    def visualize(
        self,
        filename: str = "compiled_graph",
        format: str = "png",
        view: bool = False,
        channel_details: bool = False,
    ) -> str:
        """Draw the graph (actors, tasks, channels, transports), with Ray's signature and
        return values: "ascii" returns the drawing; other formats write ``filename`` (the
        DOT source) and ``filename.<format>``, and return the DOT source."""
        from ._visualize import visualize

        return visualize(self._plan, filename, format, view, channel_details)

    def stats(self) -> dict[str, Any]:
        """Per task and per channel: counts and latency percentiles (microseconds)."""
        return _stats_report.collect(self._plan, self._actors, self._caller_stats())

    def _caller_stats(self) -> dict[str, Any]:
        results = self._results
        return {
            "executions_submitted": self._next_exec,
            "results_read": results.results_read if results else 0,
            "results_buffered": results.buffered if results else 0,
            "in_flight": self._next_exec - (results.next_read if results else 0),
        }

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self._name} cannot be pickled or sent to another process: only the process "
            "that compiled it may execute it"
        )


def close_all_graphs() -> None:
    """At interpreter exit: close every live graph's rings (no Ray calls: Ray may be
    shutting down). Executors see their channels closed and exit on their own."""
    for g in list(_LIVE):
        g._closing = True
        g._res.close_rings()


def actor_running_graphs(actor: ActorHandle) -> list[str]:
    """The graph ids whose executor threads run on ``actor`` (for tests and debugging)."""
    return ray.get(actor.__ray_call__.remote(running_graphs))  # type: ignore[no-any-return]
