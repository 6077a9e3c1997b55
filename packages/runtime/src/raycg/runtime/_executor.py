"""The actor side's loop: one executor per (actor, graph), on a background thread.

Built and started by ``_actor.setup_actor`` from the actor's part of the plan. Each
execution it runs the actor's tasks in the plan's order: a task reads the channels it
needs (an input channel is read once per execution, by the first task that needs it,
and shared with the others), calls the method, and writes the result to its output
channels. A task whose input is a failure (a ``RayTaskError`` value) does not run: the
failure is its result, so it reaches the caller's ``get`` of every output downstream
of it, and only those. The executor thread never touches Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray import cloudpickle
from ray.exceptions import RayTaskError

from raycg.proto import ActorSetup, ArgPlan, ChannelPlan, Transport
from raycg.transports import (
    Channel,
    ChannelBroken,
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    InprocRing,
    Pending,
    ShmRingSpec,
    ValueNotSerializable,
    open_reader,
    open_writer,
)

from . import _errors, _tensor_edges
from ._collectives import CollectiveTask
from ._comm_groups import Joined
from ._projection import FIRST_ARG, compile_projections, project
from ._stats import STATS_ENABLED, Recorder, timed

Getter = Callable[[list[Any]], Any]

# Several graphs per actor. Each graph has its own executor thread on the actor, and
# the tasks of all of them take this lock around the user's method, so they never run
# concurrently on one actor (Ray's one-thing-at-a-time actor semantics; ordinary
# .remote() calls are not serialized with graph tasks, as in Ray's Compiled Graph).
#
# Why executing graphs that share actors, interleaved in any order, cannot deadlock:
# the lock is held only while a method runs, never while a thread waits on a channel,
# and a method waits on nothing of ours. So the only waits are each graph's own
# channel waits, and within one graph those cannot form a cycle: every actor runs its
# tasks in one global topological order (the compiler's schedule pass) and every
# channel has a slot per execution in flight. Graphs share no channel, no buffer and
# no thread, so one graph's waits never depend on another's progress; the lock can
# only delay a task by the length of another graph's method call.
_TASK_LOCK = threading.Lock()


def _make_getter(arg: ArgPlan, slots: list[int], from_input: list[bool]) -> Getter:
    """A function from this execution's channel values to one argument's value."""
    if arg.WhichOneof("source") == "constant":
        const = cloudpickle.loads(arg.constant)
        return lambda vals: const
    idx = slots[arg.input_slot]
    steps = compile_projections(arg.projections)
    if not steps:
        return lambda vals: vals[idx]
    is_input = from_input[arg.input_slot]
    if is_input and steps == FIRST_ARG:  # the commonest: f.bind(inp)
        return lambda vals: vals[idx][0][0]
    return lambda vals: project(vals[idx], steps, is_input)


class _Task:
    __slots__ = (
        "check",
        "collective",
        "display",
        "getters",
        "input_idx",
        "kwgetters",
        "method",
        "num_returns",
        "reads",
        "resolve",
        "stats",
        "writers",
    )

    def __init__(self, method: Callable[..., Any], display: str, num_returns: int):
        self.method = method
        self.display = display
        self.num_returns = num_returns
        # channels first read by this task: (value index, the channel's read)
        self.reads: list[tuple[int, Callable[[float | None], Any]]] = []
        # values a task before this one began to receive (overlap_gpu_communication):
        # (value index, what finishes one: waits for its tensors, places them)
        self.resolve: list[tuple[int, Callable[[Any], Any]]] = []
        self.input_idx: list[int] = []  # every channel value this task uses
        self.getters: list[Getter] = []
        self.kwgetters: list[tuple[str, Getter]] = []
        self.writers: list[Channel] = []
        self.stats = Recorder()  # time in the method
        self.collective: CollectiveTask | None = None  # set: method is this member's part
        self.check: _tensor_edges.PromiseCheck | None = None  # its type hint's promises


class Executor:
    """One graph's loop on this actor. ``on_exit`` runs on the executor thread when the
    loop ends (its channels closed), whatever ended it."""

    def __init__(
        self,
        setup: ActorSetup,
        instance: object,
        on_exit: Callable[[Executor], None],
        extras: dict[str, Any] | None = None,
    ):
        self.graph_id = setup.graph_id
        self.actor_repr = setup.actor.actor_label
        self.actor_id = setup.actor.actor_id
        self.endpoints: list[Channel] = []
        self.inproc: list[InprocRing] = []
        # Why the loop ended, if not by a close: (kind, message, the task it was in).
        self.error: tuple[str, str, str] | None = None
        self.running: _Task | None = None  # the task under way (for the error report)
        self.executions = 0
        self._on_exit = on_exit
        self._extras = extras or {}
        self.collectives: list[CollectiveTask] = []
        # This actor's communicator groups of the graph (tensor edges, collectives over a
        # user's instance), each joined once; edges: channel id -> EdgeRanks.
        self.groups = Joined(self._extras.get("groups", {}), self._extras.get("timeout_s"))
        self._edges: dict[str, Any] = self._extras.get("edges", {})
        try:
            self.tasks = self._build(setup, instance)
        except BaseException:
            self.close()
            for coll in self.collectives:  # no loop will run: leave the groups joined so far
                coll.destroy()
            self.groups.destroy()
            raise
        self.nvals = len(self._index)
        self.thread = threading.Thread(target=self._run, name=f"raycg-{self.graph_id[:8]}", daemon=True)

    def _build(self, setup: ActorSetup, instance: object) -> list[_Task]:
        plans = {c.channel_id: c for c in setup.channels}
        _tensor_edges.load_torch(list(plans.values()))
        self.groups.join_all()  # in one order on every member: a NCCL init waits for all
        shm = {e.channel_id: e for e in setup.shm}
        self._grpc = {e.channel_id: e for e in setup.grpc}
        inproc = {
            c.channel_id: InprocRing(c.num_slots, 1, c.label)
            for c in plans.values()
            if c.transport == Transport.INPROC
        }
        self.inproc = list(inproc.values())
        self._index: dict[str, int] = {}
        self.read_stats: dict[str, Recorder] = {}
        tasks = []
        prefetched: dict[str, Callable[[Any], Any]] = {}  # channel -> its resolve
        for tp in setup.actor.tasks:
            if tp.HasField("collective"):
                coll = self._collective(tp)
                task = _Task(coll, tp.display_name, 1)
                task.collective = coll
            else:
                task = _Task(getattr(instance, tp.method), tp.display_name, tp.num_returns or 1)
            if STATS_ENABLED:  # time spent in the method
                task.method = timed(task.method, task.stats)
            slots, from_input = [], []
            for ch in tp.inputs:
                if ch not in self._index:
                    task.reads.append(self._reader(ch, plans[ch], setup, shm, inproc))
                elif ch in prefetched:  # a task before this one began receiving it
                    task.resolve.append((self._index[ch], prefetched.pop(ch)))
                slots.append(self._index[ch])
                from_input.append(plans[ch].writer.WhichOneof("kind") == "driver")
            task.input_idx = slots
            task.getters = [_make_getter(a, slots, from_input) for a in tp.args]
            task.kwgetters = [(kw.name, _make_getter(kw.value, slots, from_input)) for kw in tp.kwargs]
            task.check = _tensor_edges.promise_check([plans[c] for c in tp.outputs], tp.display_name)
            task.writers = [self._open_writer(plans[ch], shm, inproc) for ch in tp.outputs]
            for ch in tp.prefetch:  # received before the method runs, for a later task
                idx, read = self._reader(ch, plans[ch], setup, shm, inproc, pending=True)
                task.reads.append((idx, read))
                place = self._placement(ch, plans[ch], setup)
                prefetched[ch] = _finisher(place)
            tasks.append(task)
        if prefetched:
            raise RuntimeError(f"{self.actor_repr}: prefetched channels no task reads: {sorted(prefetched)}")
        return tasks

    def _placement(self, ch: str, plan: ChannelPlan, setup: ActorSetup) -> Callable[[Any], Any] | None:
        """Where the hint puts the channel's tensors on this actor (None: as they come)."""
        gpu_ids = list(setup.actor.gpu_ids)
        edge = self._edges.get(ch)
        if edge is None:
            return _tensor_edges.placement(plan, gpu_ids)
        return _tensor_edges.comm_placement(plan, self.groups.get(edge.group), gpu_ids)

    def _reader(
        self, ch: str, plan: ChannelPlan, setup: ActorSetup, shm: dict, inproc: dict, pending: bool = False
    ) -> tuple[int, Callable[[float | None], Any]]:
        """Open channel ``ch``'s read end: its value index and its read. A ``pending``
        read (a prefetch) starts the receive and returns a Pending, which the task that
        uses the value finishes (:func:`_finisher`): placement happens there."""
        self._index[ch] = len(self._index)
        ep = self._open_reader(plan, setup.actor.actor_id, shm, inproc)
        read: Callable[[float | None], Any]
        if pending:
            # Only communicator edges are prefetched (the compiler's overlap pass): their
            # read end is a TensorReader.
            read = ep.read_pending  # type: ignore[attr-defined]
        else:
            read = ep.read
            place = self._placement(ch, plan, setup)
            if place is not None:  # the hint's device: the reader's GPU
                read = _placed(read, place)
        if STATS_ENABLED:  # time spent waiting for the value
            read = timed(read, self.read_stats.setdefault(ch, Recorder()))
        return self._index[ch], read

    def _collective(self, tp: Any) -> CollectiveTask:
        """Join this task's collective (the communicator spec came with the setup)."""
        cid = tp.collective.collective_id
        group = self._extras.get("collective_groups", {}).get(cid)
        spec = self._extras.get("comms", {}).get(cid) if group is None else self.groups.get(group)
        if spec is None:
            raise RuntimeError(f"{tp.display_name}: no communicator was set up for {cid}")
        coll = CollectiveTask(
            tp.collective,
            spec,
            self._extras.get("timeout_s"),
            tp.display_name,
            self.actor_repr,
            self.actor_id,
        )
        self.collectives.append(coll)
        return coll

    def _open_reader(self, plan: ChannelPlan, me: str, shm: dict, inproc: dict) -> Channel:
        if plan.transport == Transport.INPROC:
            ep: Channel = inproc[plan.channel_id].reader(0)
        else:
            e = shm[plan.channel_id]
            ep = open_reader(
                ShmRingSpec(plan.label, e.pid, e.ctrl_fd, e.num_slots, e.num_readers), e.reader_index
            )
        edge = self._edges.get(plan.channel_id)
        if edge is not None:  # the ring carries headers; the tensors come over the communicator
            ep = _tensor_edges.comm_reader(
                plan, ep, self.groups.get(edge.group), edge, self._extras.get("timeout_s")
            )
        self.endpoints.append(ep)
        return ep

    def _open_writer(self, plan: ChannelPlan, shm: dict, inproc: dict) -> Channel:
        if plan.transport == Transport.INPROC:
            ep: Channel = inproc[plan.channel_id].writer()
        elif plan.transport == Transport.GRPC:  # to the rings of the other nodes' readers
            e = self._grpc[plan.channel_id]
            from raycg.transports import GrpcChannelSpec, GrpcTarget, GrpcWriter  # grpcio: only here

            targets = tuple(GrpcTarget(t.address, t.stream_id) for t in e.targets)
            ep = GrpcWriter(GrpcChannelSpec(plan.label or plan.channel_id, e.num_slots, targets))
        else:
            e = shm[plan.channel_id]
            ep = open_writer(ShmRingSpec(plan.label, e.pid, e.ctrl_fd, e.num_slots, e.num_readers))
        edge = self._edges.get(plan.channel_id)
        if edge is not None:  # the ring carries headers; the tensors go over the communicator
            ep = _tensor_edges.comm_writer(plan, ep, self.groups.get(edge.group), edge)
        self.endpoints.append(ep)
        return ep

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        vals: list[Any] = [None] * self.nvals
        try:
            while True:
                self._run_once(vals)
                self.executions += 1
        except ChannelClosed:
            pass  # the caller closed the graph's rings (teardown), or a peer's loop ended
        except ChannelBroken as e:
            self._failed("channel_broken", e)
        except ChannelTimeout as e:  # a member of a collective never joined
            self._failed("communicator_timeout", e)
        except BaseException as e:  # a bug of ours: report it, never die silently
            self._failed("executor_crashed", e)
        finally:
            self.close()
            for coll in self.collectives:  # only this thread calls them: safe to leave now
                coll.destroy()
            self.groups.destroy()
            self._on_exit(self)

    def _failed(self, kind: str, e: BaseException) -> None:
        task = self.running.display if self.running is not None else ""
        self.error = (kind, f"{type(e).__name__}: {e}", task)

    def _run_once(self, vals: list[Any]) -> None:
        for task in self.tasks:
            self.running = task
            for idx, read in task.reads:
                try:  # free in 3.11 unless raised; no extra call on the hot path
                    vals[idx] = read(None)
                except ChannelError:
                    raise
                except Exception as e:
                    vals[idx] = self._undecodable(e, task)
            for idx, finish in task.resolve:  # overlap_gpu_communication's receives
                try:
                    vals[idx] = finish(vals[idx])
                except ChannelError:
                    raise
                except Exception as e:
                    vals[idx] = self._undecodable(e, task)
            result = None
            # A collective's member runs even on a failed input: the others wait for it.
            for idx in task.input_idx if task.collective is None else ():
                if isinstance(vals[idx], RayTaskError):
                    result = vals[idx]  # an upstream task failed: skip this one
                    break
            if result is None:
                result = self._call(task, vals)
                if task.check is not None:  # _static_shape, _direct_return
                    result = _tensor_edges.checked(
                        task.check, result, task.display, self.actor_repr, self.actor_id
                    )
            for w in task.writers:
                self._write(w, result, task)
        for i in range(self.nvals):
            vals[i] = None  # do not pin zero-copy inputs between executions

    def _undecodable(self, e: Exception, task: _Task) -> RayTaskError:
        """A value that failed to unpickle here (its slot is consumed all the same, so
        the channel stays in step) is this execution's failure, passed downstream like a
        method's; channel faults end the loop instead."""
        err = TypeError(f"{task.display}: an input could not be deserialized: {type(e).__name__}: {e}")
        err.__cause__ = e
        return _errors.wrap_task_error(err, task.display, self.actor_repr, self.actor_id)

    def _call(self, task: _Task, vals: list[Any]) -> Any:
        try:
            args = [g(vals) for g in task.getters]
            kwargs = {k: g(vals) for k, g in task.kwgetters}
            if task.collective is not None:
                # Never under the lock: it waits for other actors, whose tasks may need
                # this actor's other graphs to progress first.
                result = task.method(*args, **kwargs)
            else:
                with _TASK_LOCK:  # one graph task at a time on this actor, whatever the graph
                    result = task.method(*args, **kwargs)
            if task.num_returns > 1:
                _check_num_returns(result, task.num_returns, task.display)
            return _NONE if result is None else result
        except BaseException as e:  # SystemExit, KeyboardInterrupt too: the user's code raised them
            if task.collective is not None and isinstance(e, ChannelError):
                raise  # the communicator failed: the loop ends (see _run)
            task.stats.errors += 1
            return _errors.wrap_task_error(e, task.display, self.actor_repr, self.actor_id)

    def _write(self, w: Channel, result: Any, task: _Task) -> None:
        if result is _NONE:
            result = None
        try:
            w.write(result, None)
        except ValueNotSerializable as e:
            w.write(_errors.unserializable_result_error(e, task.display, self.actor_repr), None)

    def close(self) -> None:
        for coll in getattr(self, "collectives", ()):
            coll.abort()  # wakes this loop, if blocked in one, and the other members
        if hasattr(self, "groups"):
            self.groups.abort()  # likewise for a transfer or collective over a group
        for ep in self.endpoints:
            ep.close()
        for ring in self.inproc:
            ring.close()


def _placed(
    read: Callable[[float | None], Any], place: Callable[[Any], Any]
) -> Callable[[float | None], Any]:
    return lambda timeout_s: place(read(timeout_s))


def _finisher(place: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """Finish a prefetched value: wait for its tensors, then place them. (A value the
    prefetch could not decode is this execution's failure already.)"""

    def finish(value: Any) -> Any:
        if not isinstance(value, Pending):
            return value
        value = value.result()
        return value if place is None else place(value)

    return finish


def _check_num_returns(result: Any, n: int, display: str) -> None:
    """A task of ``num_returns=n`` returns n values (Ray's message, for the same fault).

    Raises:
        ValueError: ``result`` is not a tuple or list of ``n`` values.
    """
    if not isinstance(result, (tuple, list)):
        raise ValueError(
            f"Expected {n} outputs, but got {type(result).__name__} {result!r:.80}: {display} "
            f"declares num_returns={n}, so it must return a tuple of {n} values"
        )
    if len(result) != n:
        raise ValueError(
            f"Expected {n} outputs, but got {len(result)} outputs: {display} declares num_returns={n}"
        )


class _NoneResult:
    """Marks a None result, so that None can mean "not computed yet" in _run_once."""


_NONE = _NoneResult()
