"""Collectives in a graph: the compiler's ``op="collective"`` tasks, run with raycg's CPU
communicator, or its NCCL one where every member has a GPU, or a user's Communicator
instance (``transport="communicator"``: handed out by ``_communicators``, joined once per
actor by the executor and passed here already joined).

Caller side (:func:`make_groups`, at setup): one ``CpuCommGroup`` per collective of the
plan, owned by the caller like every ring, its picklable spec handed to each member with
its rank (the plan's order of ``members``). A NCCL collective gets a fresh NCCL unique
id instead (:class:`NcclSpec`, from the driver, which needs cupy but no GPU); each
member joins with ``NcclCommunicator``, which warms up at setup. The group is closed (aborted: every member's
wait ends) at teardown, before the actors are asked to stop, so no executor stays blocked
in a collective.

Actor side (:class:`CollectiveTask`): the member's communicator, joined at setup; each
execution one call. A member whose input is a failure (an upstream ``RayTaskError``) or
not a CPU tensor still takes part: every member first allreduces one int64 flag (MAX of
``rank + 1`` over the failed members), and if one failed, that member broadcasts its
pickled error, which becomes every member's result for that execution. The real
collective is skipped, so the members stay in step and later executions are unaffected.
The flag costs one small extra collective per execution: the price of never leaving the
other members blocked on a member that has nothing to contribute.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from ray.exceptions import RayTaskError

from raycg.proto import CollectiveKind, Plan
from raycg.transports import (
    ChannelBroken,
    ChannelTimeout,
    Communicator,
    CpuCommGroup,
    CpuCommSpec,
    CpuCommunicator,
    NcclCommunicator,
    ReduceOp,
    nccl_unique_id,
)

from . import _errors
from ._comm_groups import NcclSpec, device_of

if TYPE_CHECKING:
    from raycg.transports import CpuNetSpec

# Bytes each member contributes per round: tensors above it take several rounds.
GROUP_CAPACITY_BYTES = 4 << 20
# How much longer than the graph's get timeout a member waits for the others: the
# caller's get then times out first (RayChannelTimeoutError), and the communicator is
# aborted just after, ending every member's wait.
TIMEOUT_MARGIN_S = 1.0


def _is_nccl(coll: Any, gpus: dict[str, bool]) -> bool:
    return bool(
        coll.transport == "nccl" or (coll.transport == "auto" and all(gpus.get(m) for m in coll.members))
    )


def nccl_missing() -> str:
    """Why this process cannot make NCCL ids ("" if it can)."""
    try:
        import cupy  # noqa: F401
        from cupy.cuda import nccl  # noqa: F401
    except ImportError as e:
        return f"cupy with NCCL is not importable here ({e}); pip install 'raycg[gpu]'"
    return ""


def refuse_unsupported(plan: Plan) -> None:
    """The collectives this runtime cannot run yet.

    Raises:
        NotImplementedError: a collective over NCCL (every member has a GPU, or
            ``transport="nccl"``) where this process has no cupy, naming it and its
            members. (One over a user's Communicator instance runs: _communicators;
            a CPU one across nodes: _crossnode_comm.)
    """
    labels = {a.actor_id: a.actor_label for a in plan.actors}
    gpus = {a.actor_id: bool(a.gpu_ids) for a in plan.actors}
    for coll in _collectives(plan).values():
        members = ", ".join(labels.get(m, m) for m in coll.members)
        if _is_nccl(coll, gpus) and nccl_missing():
            raise NotImplementedError(
                f"{coll.collective_id} (members {members}): a NCCL collective needs NCCL ids from the "
                f"driver: {nccl_missing()}; or bind it with transport='cpu'"
            )


def _collectives(plan: Plan) -> dict[str, Any]:
    """collective id -> one member's CollectivePlan (every member's carries the same ids)."""
    return {
        t.collective.collective_id: t.collective
        for a in plan.actors
        for t in a.tasks
        if t.HasField("collective")
    }


def hosted_on_members(plan: Plan) -> dict[str, Any]:
    """The CPU collectives whose shared memory the caller cannot make: those with a member
    on another node than the caller's (memfds are reached through /proc/<pid>/fd, on
    their own node only). Their members' nodes make it (_crossnode_comm)."""
    gpus = {a.actor_id: bool(a.gpu_ids) for a in plan.actors}
    nodes = {a.actor_id: a.node_id for a in plan.actors}
    here = plan.driver_node_id
    return {
        cid: coll
        for cid, coll in _collectives(plan).items()
        if coll.transport != "communicator"
        and not _is_nccl(coll, gpus)
        and any(nodes.get(m) and here and nodes.get(m) != here for m in coll.members)
    }


def make_groups(plan: Plan, keep: list[Any]) -> dict[str, dict[str, CpuCommSpec | NcclSpec]]:
    """Create one communicator group per collective (a CPU one appended to ``keep``,
    whose owner closes them); return actor id -> {collective id: the group's spec}.
    (A CPU collective with members on other nodes is hosted there: _crossnode_comm.)"""
    specs: dict[str, dict[str, CpuCommSpec | NcclSpec]] = {}
    gpus = {a.actor_id: bool(a.gpu_ids) for a in plan.actors}
    elsewhere = hosted_on_members(plan)
    for cid, coll in _collectives(plan).items():
        if coll.transport == "communicator" or cid in elsewhere:
            continue  # the user's instance (_communicators), or made on the members' nodes
        if _is_nccl(coll, gpus):
            nccl = NcclSpec(nccl_unique_id(), len(coll.members))
            for m in coll.members:
                specs.setdefault(m, {})[cid] = nccl
            continue
        group = CpuCommGroup(
            len(coll.members),
            capacity_bytes=GROUP_CAPACITY_BYTES,
            p2p=False,
            name=f"{plan.graph_id[:8]}.{cid}",
        )
        keep.append(group)
        for m in coll.members:
            specs.setdefault(m, {})[cid] = group.spec
    return specs


def member_timeout(get_timeout_s: float) -> float | None:
    """A member's bound on each collective call, from the plan's get timeout (-1: none)."""
    return None if get_timeout_s < 0 else get_timeout_s + TIMEOUT_MARGIN_S


class CollectiveTask:
    """One member's part of one collective, called by the executor once per execution
    with the member's input value; returns the member's result (a tensor) or the
    execution's failure (a ``RayTaskError``).

    Args:
        coll: the task's ``CollectivePlan``.
        spec: the group's spec (from :func:`make_groups`), or a communicator already
            joined (a user's instance, shared with the graph's other uses of it: this
            task neither aborts nor destroys it; its owner does).
        timeout_s: bound on each call (None: until the group is aborted).
        display, actor_repr, actor_id: for errors.
    """

    def __init__(
        self,
        coll: Any,
        spec: CpuCommSpec | CpuNetSpec | NcclSpec | Communicator,
        timeout_s: float | None,
        display: str,
        actor_repr: str,
        actor_id: str,
    ):
        self.kind = coll.kind
        self.rank = coll.rank
        self.src_rank = coll.src_rank
        self.world = len(coll.members)
        self.op = ReduceOp.of(coll.reduce_op or "SUM")
        self.display, self.actor_repr, self.actor_id = display, actor_repr, actor_id
        import torch  # a collective's member exchanges tensors

        self._torch = torch
        self.comm: Communicator
        self._owned = not isinstance(spec, Communicator)
        if isinstance(spec, Communicator):
            self.comm = spec
            self.device = device_of(spec)
        elif isinstance(spec, NcclSpec):  # on this actor's GPU (Ray made it the only one)
            self.comm = NcclCommunicator(spec.unique_id, spec.world_size, coll.rank, timeout_s=timeout_s)
            self.device = "cuda"
        elif isinstance(spec, CpuCommSpec):
            self.comm = CpuCommunicator(spec, coll.rank, timeout_s=timeout_s)
            self.device = "cpu"
        else:  # members on several nodes (_crossnode_comm): grpcio loads only then
            from raycg.transports import CpuNetCommunicator

            self.comm = CpuNetCommunicator(spec, coll.rank, timeout_s=timeout_s)
            self.device = "cpu"
        self._flag = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._flag_out = torch.zeros(1, dtype=torch.int64, device=self.device)

    def __call__(self, value: Any) -> Any:
        err = value if isinstance(value, RayTaskError) else None
        recv = None
        if err is None:
            try:
                recv = self._result_buffer(value)
            except (TypeError, ValueError) as e:
                err = _errors.wrap_task_error(e, self.display, self.actor_repr, self.actor_id)
        self._flag[0] = 0 if err is None else self.rank + 1
        self._call(self.comm.allreduce, self._flag, self._flag_out, ReduceOp.MAX)
        failed = int(self._flag_out[0]) - 1
        if failed >= 0:
            return self._share_error(failed, err)
        x = value.contiguous()
        if self.kind == CollectiveKind.ALLREDUCE:
            self._call(self.comm.allreduce, x, recv, self.op)
        elif self.kind == CollectiveKind.ALLGATHER:
            self._call(self.comm.allgather, x, recv)
        elif self.kind == CollectiveKind.REDUCESCATTER:
            self._call(self.comm.reducescatter, x, recv, self.op)
        else:
            self._call(self.comm.broadcast, recv, self.src_rank)
        return recv

    def _result_buffer(self, value: Any) -> Any:
        """A fresh tensor for this member's result (results travel on: never reused).

        Raises:
            TypeError: the input is not a torch tensor on this member's device.
            ValueError: a reducescatter input whose first dimension does not split evenly.
        """
        torch = self._torch
        if not isinstance(value, torch.Tensor) or value.device.type != self.device:
            what = f"a tensor on {value.device}" if isinstance(value, torch.Tensor) else type(value).__name__
            where = "CPU" if self.device == "cpu" else "CUDA"
            raise TypeError(f"{self.display} takes a {where} torch tensor from each member, got {what}")
        if self.kind == CollectiveKind.ALLGATHER:
            if value.dim() == 0:
                raise ValueError(f"{self.display}: allgather of a 0-d tensor (it concatenates along dim 0)")
            return value.new_empty((self.world * value.shape[0], *value.shape[1:]))
        if self.kind == CollectiveKind.REDUCESCATTER:
            if value.dim() == 0 or value.shape[0] % self.world:
                raise ValueError(
                    f"{self.display}: reducescatter splits dim 0 among {self.world} members, and this "
                    f"member's tensor has shape {tuple(value.shape)}"
                )
            return value.new_empty((value.shape[0] // self.world, *value.shape[1:]))
        if self.kind == CollectiveKind.BROADCAST:
            return value.clone(memory_format=torch.contiguous_format)
        return torch.empty_like(value, memory_format=torch.contiguous_format)

    def _share_error(self, failed: int, err: RayTaskError | None) -> RayTaskError:
        """Member ``failed``'s error, sent to every member (the same for all)."""
        torch = self._torch
        data = pickle.dumps(err) if self.rank == failed else b""
        self._flag[0] = len(data)
        self._call(self.comm.allreduce, self._flag, self._flag_out, ReduceOp.MAX)
        buf = torch.zeros(int(self._flag_out[0]), dtype=torch.uint8, device=self.device)
        if self.rank == failed:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self._call(self.comm.broadcast, buf, failed)
        if err is not None and self.rank == failed:
            return err
        got: RayTaskError = pickle.loads(buf.cpu().numpy().tobytes())
        return got

    def _call(self, fn: Any, *args: Any) -> None:
        """A communicator call; a member that never joined ends the loop, naming us.

        Raises:
            ChannelTimeout: a member did not join in time (the group is aborted).
            ChannelBroken: a member died.
            ChannelClosed: the group was aborted (teardown, or another member's timeout).
        """
        try:
            fn(*args)
        except ChannelTimeout as e:
            raise ChannelTimeout(f"{self.display} on {self.actor_repr}: {e}") from None
        except ChannelBroken as e:
            raise ChannelBroken(f"{self.display} on {self.actor_repr}: {e}") from None

    def abort(self) -> None:
        """Wake this member's blocked call and every other member's (any thread)."""
        if self._owned:
            self.comm.abort()

    def destroy(self) -> None:
        """Leave the group (the executor thread, once its loop ended)."""
        if self._owned:
            self.comm.destroy()
