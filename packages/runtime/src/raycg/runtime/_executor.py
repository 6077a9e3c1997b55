"""The actor side: open a graph's channels, run its schedule on a background thread.

The runtime on the caller reaches an actor exactly twice per graph, through Ray's
supported hook for running a function on an actor instance (``actor.__ray_call__``):
:func:`setup_actor` at compile and :func:`teardown_actor` at teardown. Everything in
between goes through the channels; the executor thread never touches Ray.

One executor per (actor, graph). Each execution it runs the actor's tasks in the
plan's order: a task reads the channels it needs (an input channel is read once per
execution, by the first task that needs it, and shared with the others), calls the
method, and writes the result to its output channels. A task whose input is a failure
(a ``RayTaskError`` value) does not run: the failure is its result, so it reaches the
caller's ``get`` of every output downstream of it, and only those.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ray import cloudpickle
from ray.exceptions import RayTaskError

from raycg.proto import ActorSetup, ActorStatus, ArgPlan, ChannelPlan, Projection, Transport
from raycg.transports import (
    Channel,
    ChannelBroken,
    ChannelClosed,
    InprocRing,
    ShmRingSpec,
    ValueNotSerializable,
    open_reader,
    open_writer,
    process_start_time,
)

from . import _errors
from ._stats import STATS_ENABLED, Recorder, timed

Getter = Callable[[list[Any]], Any]

# graph id -> executor, for every graph this actor takes part in.
_EXECUTORS: dict[str, _Executor] = {}
_REGISTRY_LOCK = threading.Lock()

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


# One Projection, read out of its protobuf message once at setup: (kind, index, key).
Step = tuple[str, int, str]


def compile_projections(projections: Sequence[Projection]) -> tuple[Step, ...]:
    return tuple((p.WhichOneof("kind"), p.index, p.key) for p in projections)


def _project(value: Any, steps: Sequence[Step], from_input: bool) -> Any:
    for kind, index, key in steps:
        if from_input:  # the caller wrote (args, kwargs)
            args, kwargs = value
            value = args[0] if kind == "first_arg" else args[index] if kind == "index" else kwargs[key]
            from_input = False
        else:
            value = value[index] if kind == "index" else value[key]
    return value


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
    if is_input and steps == (("first_arg", 0, ""),):  # the commonest: f.bind(inp)
        return lambda vals: vals[idx][0][0]
    return lambda vals: _project(vals[idx], steps, is_input)


class _Task:
    __slots__ = (
        "display",
        "getters",
        "input_idx",
        "kwgetters",
        "method",
        "num_returns",
        "reads",
        "stats",
        "writers",
    )

    def __init__(self, method: Callable[..., Any], display: str, num_returns: int):
        self.method = method
        self.display = display
        self.num_returns = num_returns
        # channels first read by this task: (value index, the channel's read)
        self.reads: list[tuple[int, Callable[[float | None], Any]]] = []
        self.input_idx: list[int] = []  # every channel value this task uses
        self.getters: list[Getter] = []
        self.kwgetters: list[tuple[str, Getter]] = []
        self.writers: list[Channel] = []
        self.stats = Recorder()  # time in the method


class _Executor:
    def __init__(self, setup: ActorSetup, instance: object):
        self.graph_id = setup.graph_id
        self.actor_repr = setup.actor.actor_label
        self.actor_id = setup.actor.actor_id
        self.endpoints: list[Channel] = []
        self.inproc: list[InprocRing] = []
        self.error: str | None = None
        self.executions = 0
        try:
            self.tasks = self._build(setup, instance)
        except BaseException:
            self.close()
            raise
        self.nvals = len(self._index)
        self.thread = threading.Thread(target=self._run, name=f"raycg-{self.graph_id[:8]}", daemon=True)

    def _build(self, setup: ActorSetup, instance: object) -> list[_Task]:
        me = setup.actor.actor_id
        plans = {c.channel_id: c for c in setup.channels}
        shm = {e.channel_id: e for e in setup.shm}
        inproc = {
            c.channel_id: InprocRing(c.num_slots, 1, c.label)
            for c in plans.values()
            if c.transport == Transport.INPROC
        }
        self.inproc = list(inproc.values())
        self._index: dict[str, int] = {}
        self.read_stats: dict[str, Recorder] = {}
        tasks = []
        for tp in setup.actor.tasks:
            task = _Task(getattr(instance, tp.method), tp.display_name, tp.num_returns or 1)
            if STATS_ENABLED:  # time spent in the method
                task.method = timed(task.method, task.stats)
            slots, from_input = [], []
            for ch in tp.inputs:
                if ch not in self._index:
                    self._index[ch] = len(self._index)
                    read = self._open_reader(plans[ch], me, shm, inproc).read
                    if STATS_ENABLED:  # time spent waiting for the value
                        read = timed(read, self.read_stats.setdefault(ch, Recorder()))
                    task.reads.append((self._index[ch], read))
                slots.append(self._index[ch])
                from_input.append(plans[ch].writer.WhichOneof("kind") == "driver")
            task.input_idx = slots
            task.getters = [_make_getter(a, slots, from_input) for a in tp.args]
            task.kwgetters = [(kw.name, _make_getter(kw.value, slots, from_input)) for kw in tp.kwargs]
            task.writers = [self._open_writer(plans[ch], shm, inproc) for ch in tp.outputs]
            tasks.append(task)
        return tasks

    def _open_reader(self, plan: ChannelPlan, me: str, shm: dict, inproc: dict) -> Channel:
        if plan.transport == Transport.INPROC:
            ep: Channel = inproc[plan.channel_id].reader(0)
        else:
            e = shm[plan.channel_id]
            ep = open_reader(
                ShmRingSpec(plan.label, e.pid, e.ctrl_fd, e.num_slots, e.num_readers), e.reader_index
            )
        self.endpoints.append(ep)
        return ep

    def _open_writer(self, plan: ChannelPlan, shm: dict, inproc: dict) -> Channel:
        if plan.transport == Transport.INPROC:
            ep: Channel = inproc[plan.channel_id].writer()
        else:
            e = shm[plan.channel_id]
            ep = open_writer(ShmRingSpec(plan.label, e.pid, e.ctrl_fd, e.num_slots, e.num_readers))
        self.endpoints.append(ep)
        return ep

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        vals: list[Any] = [None] * self.nvals
        try:
            while True:
                self._run_once(vals)
                self.executions += 1
        except (ChannelClosed, ChannelBroken) as e:
            if not isinstance(e, ChannelClosed):
                self.error = f"{type(e).__name__}: {e}"
        except BaseException as e:  # a bug of ours: report it, never die silently
            self.error = f"executor crashed: {type(e).__name__}: {e}"
        finally:
            self.close()
            with _REGISTRY_LOCK:
                if _EXECUTORS.get(self.graph_id) is self:
                    del _EXECUTORS[self.graph_id]  # dropped without a teardown call

    def _run_once(self, vals: list[Any]) -> None:
        for task in self.tasks:
            for idx, read in task.reads:
                vals[idx] = read(None)
            result = None
            for idx in task.input_idx:
                if isinstance(vals[idx], RayTaskError):
                    result = vals[idx]  # an upstream task failed: skip this one
                    break
            if result is None:
                result = self._call(task, vals)
            for w in task.writers:
                self._write(w, result, task)
        for i in range(self.nvals):
            vals[i] = None  # do not pin zero-copy inputs between executions

    def _call(self, task: _Task, vals: list[Any]) -> Any:
        try:
            args = [g(vals) for g in task.getters]
            kwargs = {k: g(vals) for k, g in task.kwgetters}
            with _TASK_LOCK:  # one graph task at a time on this actor, whatever the graph
                result = task.method(*args, **kwargs)
            if result is None:
                return _NONE
            if task.num_returns > 1 and (
                not isinstance(result, (tuple, list)) or len(result) != task.num_returns
            ):
                raise ValueError(
                    f"{task.display} declares num_returns={task.num_returns} but returned "
                    f"{type(result).__name__} {result!r:.80}"
                )
            return result
        except Exception as e:
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
        for ep in self.endpoints:
            ep.close()
        for ring in self.inproc:
            ring.close()


class _NoneResult:
    """Marks a None result, so that None can mean "not computed yet" in _run_once."""


_NONE = _NoneResult()


def setup_actor(instance: object, setup_bytes: bytes) -> bytes:
    """Runs on the actor (through ``__ray_call__``): open the channels, start the loop."""
    setup = ActorSetup.FromString(setup_bytes)
    status = ActorStatus(graph_id=setup.graph_id, actor_id=setup.actor.actor_id, pid=os.getpid())
    status.pid_start_time = process_start_time(os.getpid()) or 0
    try:
        ex = _Executor(setup, instance)
    except Exception as e:
        status.state = ActorStatus.FAILED
        status.error.kind = "setup_failed"
        status.error.message = f"{type(e).__name__}: {e}"
        return status.SerializeToString()
    with _REGISTRY_LOCK:
        _EXECUTORS[setup.graph_id] = ex
    ex.thread.start()
    status.state = ActorStatus.READY
    return status.SerializeToString()


def teardown_actor(instance: object, graph_id: str, timeout_s: float) -> bytes:
    """Runs on the actor: stop the graph's loop, wait for it, free its channels."""
    with _REGISTRY_LOCK:
        ex = _EXECUTORS.pop(graph_id, None)
    status = ActorStatus(graph_id=graph_id, state=ActorStatus.STOPPED)
    if ex is None:
        return status.SerializeToString()
    ex.close()
    ex.thread.join(timeout_s)
    status.executions_done = ex.executions
    if ex.thread.is_alive():
        status.state = ActorStatus.FAILED
        status.error.kind = "teardown_timeout"
        status.error.message = f"a task of the graph still runs after {timeout_s} s"
    elif ex.error:
        status.error.kind = "executor_error"
        status.error.message = ex.error
    return status.SerializeToString()


def executor_stats(instance: object, graph_id: str) -> dict[str, Any]:
    """Runs on the actor: this graph's recorders, summarized."""
    with _REGISTRY_LOCK:
        ex = _EXECUTORS.get(graph_id)
    if ex is None:
        return {"tasks": {}, "reads": {}}
    tasks = {f"{i}:{t.display}": t.stats.summary() for i, t in enumerate(ex.tasks, 1)}
    return {"tasks": tasks, "reads": {cid: rec.summary() for cid, rec in ex.read_stats.items()}}


def running_graphs(instance: object) -> list[str]:
    """Runs on the actor: the graphs whose executor threads are alive (for tests)."""
    with _REGISTRY_LOCK:
        return [g for g, ex in _EXECUTORS.items() if ex.thread.is_alive()]
