"""The communicators of a graph's tensor edges and of its collectives over a user's
instance, as the caller sets them up (the actor side is ``_comm_groups``).

- A **NCCL edge** (``ChannelPlan.tensor`` TENSOR_ACCELERATOR, no ``default_communicator``):
  one raycg NCCL group per edge, its writer rank 0 and its readers 1..n, a unique id made
  here (cupy, no GPU needed). Each member joins it at setup (``NcclCommunicator``, warmed
  up then), and its tensors go with ncclSend/ncclRecv (``raycg.transports.TensorWriter``).
- A **Communicator edge** (TENSOR_COMMUNICATOR) and a **collective over an instance**:
  the plan's ``communicators`` name the instances (the compiler checked their actors and
  ranks); the instance, kept in the compiler's IR, is pickled to each of its members,
  which ``initialize(rank)``s it once, however many edges and collectives use it.
  - Ray's own ``CPUCommunicator`` moves nothing itself in Ray's Compiled Graph (its send
    and recv only synchronize, the tensors going through Ray's shared-memory channel), so
    raycg sends such an edge's tensors inside the value, through the edge's ring; a
    collective over it runs with raycg's CPU communicator (all four kinds and the
    failure exchange, where Ray's does allreduce only).
  - :class:`CpuTwin` stands for raycg's own CPU communicator: the caller makes a
    ``CpuCommGroup`` for it (owned here, like every ring) and its members join it as
    they join a NCCL group. The NCCL path and this one are the same code with another
    communicator plugged in, so CI runs the NCCL edge's code on CPU actors through it.
  - Any other instance is the user's (a process group the actors share, say).

Member actors get, beside their plan (pickled, ``setup_actor``'s ``extras``): ``groups``
(group id -> their :class:`~._comm_groups.Member`), ``edges`` (channel id ->
:class:`~._comm_groups.EdgeRanks`) and ``collective_groups`` (collective id -> group id).
"""

from __future__ import annotations

from typing import Any

from ray.experimental.channel.communicator import Communicator

from raycg.proto import Plan, TensorTransport, Transport
from raycg.transports import CpuCommGroup, nccl_unique_id

from ._comm_groups import EdgeRanks, Member, NcclSpec, UserSpec

# Bytes per member per round of a CpuTwin group's collectives (larger take more rounds).
TWIN_CAPACITY_BYTES = 4 << 20


class CpuTwin(Communicator):
    """raycg's CPU communicator, asked for as a Communicator instance: pass it where Ray
    takes one (``with_tensor_transport(transport=CpuTwin(actors))``, a collective's
    ``transport=``, ``default_communicator=``) to move tensors with raycg's CPU
    communicator among CPU actors, the CPU twin of raycg's NCCL path (tests use it;
    ``raycg.runtime.testing.CpuTwin``). raycg replaces it at setup: its methods are never
    called on a member, and it has nothing to do outside raycg.

    Args:
        actors: its actors, rank ``i`` the ``i``-th.
    """

    def __init__(self, actors: list[Any]):
        self._actors = list(actors)

    def initialize(self, rank: int) -> None:
        raise RuntimeError("CpuTwin stands for raycg's CPU communicator: only raycg.compile uses it")

    def get_actor_handles(self) -> list[Any]:
        return list(self._actors)

    def get_rank(self, actor: Any) -> int:
        ids = [a._actor_id for a in self._actors]
        return ids.index(actor._actor_id)

    def get_self_rank(self) -> int | None:
        return None

    def get_world_size(self) -> int:
        return len(self._actors)

    def send(self, value: Any, peer_rank: int) -> None:
        raise RuntimeError("CpuTwin stands for raycg's CPU communicator: only raycg.compile uses it")

    def recv(self, shape: Any, dtype: Any, peer_rank: int, allocator: Any = None) -> Any:
        raise RuntimeError("CpuTwin stands for raycg's CPU communicator: only raycg.compile uses it")

    @property
    def recv_stream(self) -> Any:
        return None

    @property
    def send_stream(self) -> Any:
        return None

    def allgather(self, send_buf: Any, recv_buf: Any) -> None:
        raise RuntimeError("CpuTwin stands for raycg's CPU communicator: only raycg.compile uses it")

    def allreduce(self, send_buf: Any, recv_buf: Any, op: Any = None) -> None:
        raise RuntimeError("CpuTwin stands for raycg's CPU communicator: only raycg.compile uses it")

    def reducescatter(self, send_buf: Any, recv_buf: Any, op: Any = None) -> None:
        raise RuntimeError("CpuTwin stands for raycg's CPU communicator: only raycg.compile uses it")

    def destroy(self) -> None:
        pass

    def get_transport_name(self) -> str:
        return "cpu"

    @classmethod
    def generate_communicator_id(cls) -> str:
        import uuid

        return uuid.uuid4().hex


def is_ray_cpu_communicator(obj: object) -> bool:
    """Whether ``obj`` is Ray's ``CPUCommunicator``, whose tensors travel through shared
    memory, as in Ray."""
    try:
        from ray.experimental.channel.cpu_communicator import CPUCommunicator
    except ImportError:  # an older or newer Ray without it: judge by the name
        return type(obj).__name__ == "CPUCommunicator" and not isinstance(obj, CpuTwin)
    return isinstance(obj, CPUCommunicator)


def instances(ir_graph: Any) -> dict[str, Any]:
    """communicator id -> the user's instance, from the compiler's IR (``CompiledPlan.graph``,
    whose ``meta["communicators"]`` keeps them: the plan, a protobuf, cannot)."""
    if ir_graph is None:
        return {}
    return {cid: use.instance for cid, use in ir_graph.meta.get("communicators", {}).items()}


def shm_communicator_channels(plan: Plan, comms: dict[str, Any]) -> set[str]:
    """The ids of ``plan``'s channels planned through Ray's CPUCommunicator: they run
    through shared memory."""
    return {
        ch.channel_id
        for ch in plan.channels
        if ch.tensor.transport == TensorTransport.TENSOR_COMMUNICATOR
        and is_ray_cpu_communicator(comms.get(ch.tensor.communicator_id))
    }


def refuse_unsupported(plan: Plan, comms: dict[str, Any]) -> None:
    """What this runtime cannot run of the plan's communicator edges.

    Raises:
        NotImplementedError: a Communicator edge whose instance this caller does not
            have (a plan made by hand), or over a :class:`CpuTwin` (shared memory on one
            node) among actors on different Ray nodes, naming the edge; a CpuTwin or Ray
            ``CPUCommunicator`` that raycg's CPU communicator stands in for (its group
            made here) with a member on another node than this caller's, naming it.
    """
    nodes = {a.actor_id: a.node_id for a in plan.actors}
    _refuse_groups_elsewhere(plan, comms, nodes)
    for ch in plan.channels:
        if ch.tensor.transport != TensorTransport.TENSOR_COMMUNICATOR:
            continue
        inst = comms.get(ch.tensor.communicator_id)
        if inst is None:
            raise NotImplementedError(
                f"{ch.label or ch.channel_id}: its tensors are planned through communicator "
                f"{ch.tensor.communicator_id!r}, and this caller was not given it"
            )
        ends = [ch.writer.actor_id, *(r.actor_id for r in ch.readers)]
        if isinstance(inst, CpuTwin) and len({nodes.get(a) for a in ends}) > 1:
            raise NotImplementedError(
                f"{ch.label or ch.channel_id}: raycg's CPU communicator is shared memory on one node, "
                "and this edge's ends run on different Ray nodes"
            )


def _refuse_groups_elsewhere(plan: Plan, comms: dict[str, Any], nodes: dict[str, str]) -> None:
    """make_groups makes a CpuCommGroup here for a CpuTwin that carries an edge and for a
    CpuTwin or Ray CPUCommunicator that runs a collective: its memfd is reached through
    /proc/<pid>/fd, on this node only, so every member must run on this node."""
    here = plan.driver_node_id
    if not here:
        return
    grouped = {
        ch.tensor.communicator_id
        for ch in plan.channels
        if ch.tensor.transport == TensorTransport.TENSOR_COMMUNICATOR
        and isinstance(comms.get(ch.tensor.communicator_id), CpuTwin)
    } | {
        t.collective.communicator_id
        for ap in plan.actors
        for t in ap.tasks
        if t.HasField("collective")
        and t.collective.transport == "communicator"
        and (
            isinstance(comms.get(t.collective.communicator_id), CpuTwin)
            or is_ray_cpu_communicator(comms.get(t.collective.communicator_id))
        )
    }
    labels = {a.actor_id: a.actor_label for a in plan.actors}
    for c in plan.communicators:
        away = [m for m in c.members if c.communicator_id in grouped and nodes.get(m) not in ("", None, here)]
        if away:
            raise NotImplementedError(
                f"{c.written}: raycg's CPU communicator stands in for it, as shared memory made on "
                f"the caller's node, and its actor {labels.get(away[0], away[0])} runs on another node; "
                "bind the collective with transport='cpu' (raycg's CPU communicator across nodes), "
                "or let a tensor edge between nodes ride its channel (transport='auto')"
            )


def make_groups(
    plan: Plan, comms: dict[str, Any], shm: set[str], keep: list[Any]
) -> dict[str, dict[str, Any]]:
    """Every group the plan's tensor edges and instance collectives need; return actor
    id -> {"groups", "edges", "collective_groups"} (see the module's docstring). raycg's
    CPU groups are appended to ``keep``, whose owner closes them at teardown."""
    out: dict[str, dict[str, Any]] = {}

    def actor(actor_id: str) -> dict[str, Any]:
        return out.setdefault(actor_id, {"groups": {}, "edges": {}, "collective_groups": {}})

    used: set[str] = set()
    for ch in plan.channels:
        tt = ch.tensor.transport
        if ch.channel_id in shm or ch.transport == Transport.INPROC:
            continue
        if tt == TensorTransport.TENSOR_ACCELERATOR:
            ends = [ch.writer.actor_id, *(r.actor_id for r in ch.readers)]
            gid = f"nccl.{ch.channel_id}"
            nccl = NcclSpec(nccl_unique_id(), len(ends))
            for rank, a in enumerate(ends):
                actor(a)["groups"][gid] = Member(nccl, rank)
                actor(a)["edges"][ch.channel_id] = EdgeRanks(gid, 0, tuple(range(1, len(ends))))
        elif tt == TensorTransport.TENSOR_COMMUNICATOR:
            cid = ch.tensor.communicator_id
            used.add(cid)
            members = _members(plan, cid)
            ranks = EdgeRanks(
                cid,
                members.index(ch.writer.actor_id),
                tuple(members.index(r.actor_id) for r in ch.readers),
            )
            for a in [ch.writer.actor_id, *(r.actor_id for r in ch.readers)]:
                actor(a)["edges"][ch.channel_id] = ranks
    for ap in plan.actors:
        for t in ap.tasks:
            if t.HasField("collective") and t.collective.transport == "communicator":
                used.add(t.collective.communicator_id)
                actor(ap.actor_id)["collective_groups"][t.collective.collective_id] = (
                    t.collective.communicator_id
                )
    for cid in sorted(used):
        members = _members(plan, cid)
        inst = comms[cid]
        spec: Any
        # Ray's CPUCommunicator in a collective: its own does allreduce only (through a
        # barrier actor), so raycg's CPU communicator stands in for it, as for CpuTwin.
        if isinstance(inst, CpuTwin) or is_ray_cpu_communicator(inst):
            group = CpuCommGroup(
                len(members), capacity_bytes=TWIN_CAPACITY_BYTES, name=f"{plan.graph_id[:8]}.{cid}"
            )
            keep.append(group)
            spec = group.spec
        else:
            spec = UserSpec(inst, _written(plan, cid))
        for rank, a in enumerate(members):  # every member joins, as a process group needs
            actor(a)["groups"][cid] = Member(spec, rank)
    return out


def _members(plan: Plan, cid: str) -> list[str]:
    return next(list(c.members) for c in plan.communicators if c.communicator_id == cid)


def _written(plan: Plan, cid: str) -> str:
    return next(c.written for c in plan.communicators if c.communicator_id == cid)
