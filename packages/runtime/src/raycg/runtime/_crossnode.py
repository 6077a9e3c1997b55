"""A plan's GRPC channels (edges across Ray nodes), set up from the caller.

For each GRPC channel and each node its readers run on, one process of that node hosts a
ring (``_hosting``): the caller when it reads there itself, else the first reader actor
on that node (one ``__ray_call__`` per host, all in parallel, before the actors' setup).
Its readers there get the ring as an ``ShmEndpoint`` (reader index: their place among
that node's readers), and the writer gets a ``GrpcEndpoint`` with one target per node.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayChannelError

from raycg.proto import (
    ChannelPlan,
    GrpcEndpoint,
    GrpcTargetPlan,
    Participant,
    Plan,
    RingHostReply,
    RingHostRequest,
    ShmEndpoint,
    Transport,
)
from raycg.transports import (
    Channel,
    GrpcChannelSpec,
    GrpcTarget,
    GrpcWriter,
    ShmRingReader,
    ShmRingSpec,
    deadline_after,
    open_reader,
    open_writer,
    remaining,
)

from . import _crossnode_comm, _hosting

HOST_TIMEOUT_S = 60.0
_DRIVER = ""  # the host key of the caller itself


def _is_driver(p: Participant) -> bool:
    return p.WhichOneof("kind") == "driver"


class CrossNode:
    """What the caller keeps of a plan's GRPC channels."""

    def __init__(self) -> None:
        self.grpc: dict[str, list[GrpcEndpoint]] = {}  # writer actor id -> its endpoints
        self.driver_writes: dict[str, GrpcChannelSpec] = {}  # channels the caller writes
        self.reader_index: dict[str, int] = {}  # GRPC channels the caller reads: its index


def set_up(
    plan: Plan, actors: dict[str, ActorHandle], res: Any, endpoints: dict[str, list[ShmEndpoint]]
) -> CrossNode:
    """Host every GRPC channel's rings on its reader nodes; add the readers' endpoints to
    ``endpoints``, and the caller's own rings to ``res.rings``; host the CPU collectives
    of other nodes there (_crossnode_comm), their specs into ``res.comm_specs``.

    Raises:
        RayChannelError: a host could not make its rings (naming it and why).
    """
    cross = CrossNode()
    nodes = {a.actor_id: a.node_id for a in plan.actors}
    labels = {a.actor_id: a.actor_label for a in plan.actors}
    for actor_id, specs in _crossnode_comm.host_groups(plan, actors).items():
        res.comm_specs.setdefault(actor_id, {}).setdefault("comms", {}).update(specs)
    _host_remote_shm(plan, actors, labels, res, endpoints)
    channels = [c for c in plan.channels if c.transport == Transport.GRPC]
    if not channels:
        return cross
    hosts: dict[str, list[tuple[ChannelPlan, list[Participant]]]] = {}
    for ch in channels:
        by_node: dict[str, list[Participant]] = {}
        for r in ch.readers:
            by_node.setdefault(plan.driver_node_id if _is_driver(r) else nodes[r.actor_id], []).append(r)
        for readers in by_node.values():
            host = _DRIVER if any(_is_driver(r) for r in readers) else readers[0].actor_id
            hosts.setdefault(host, []).append((ch, readers))
    replies = _host_all(plan.graph_id, hosts, actors, labels, res)
    targets: dict[str, list[GrpcTargetPlan]] = {}
    for host, items in hosts.items():
        reply = replies[host]
        for (ch, readers), ring in zip(items, reply.rings):
            sid = _hosting.stream_id(plan.graph_id, ch.channel_id)
            targets.setdefault(ch.channel_id, []).append(GrpcTargetPlan(address=reply.address, stream_id=sid))
            for i, r in enumerate(readers):
                if _is_driver(r):
                    cross.reader_index[ch.channel_id] = i
                else:
                    ep = ShmEndpoint()
                    ep.CopyFrom(ring)
                    ep.reader_index = i
                    endpoints.setdefault(r.actor_id, []).append(ep)
    for ch in channels:
        ep = GrpcEndpoint(channel_id=ch.channel_id, num_slots=ch.num_slots, targets=targets[ch.channel_id])
        if _is_driver(ch.writer):
            cross.driver_writes[ch.channel_id] = grpc_spec(ch.label or ch.channel_id, ep)
        else:
            cross.grpc.setdefault(ch.writer.actor_id, []).append(ep)
    return cross


def _host_remote_shm(
    plan: Plan,
    actors: dict[str, ActorHandle],
    labels: dict[str, str],
    res: Any,
    endpoints: dict[str, list[ShmEndpoint]],
) -> None:
    """Host each SHM channel of a remote node on its writer actor (as GRPC channels'
    rings are hosted: ``_hosting``, freed by its teardown or the end of its executor);
    give the writer and the readers their endpoints."""
    hosts: dict[str, list[tuple[ChannelPlan, list[Participant]]]] = {}
    for ch in plan.channels:
        if _hosting.is_remote_shm(plan, ch):
            hosts.setdefault(ch.writer.actor_id, []).append((ch, list(ch.readers)))
    if not hosts:
        return
    replies = _host_all(plan.graph_id, hosts, actors, labels, res)
    for host, items in hosts.items():
        for (_ch, readers), ring in zip(items, replies[host].rings):
            mine = ShmEndpoint()
            mine.CopyFrom(ring)
            mine.reader_index = -1
            endpoints.setdefault(host, []).append(mine)
            for i, r in enumerate(readers):
                ep = ShmEndpoint()
                ep.CopyFrom(ring)
                ep.reader_index = i
                endpoints.setdefault(r.actor_id, []).append(ep)


def local_processes(plan: Plan, processes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The actors the caller's /proc monitor can watch: those on the caller's node (a pid
    on another node means nothing here, and would read as dead)."""
    local = {a.actor_id for a in plan.actors if a.node_id == plan.driver_node_id}
    return {aid: p for aid, p in processes.items() if aid in local}


def grpc_spec(name: str, ep: GrpcEndpoint) -> GrpcChannelSpec:
    targets = tuple(GrpcTarget(t.address, t.stream_id) for t in ep.targets)
    return GrpcChannelSpec(name, ep.num_slots, targets)


def _host_all(
    graph_id: str,
    hosts: dict[str, list[tuple[ChannelPlan, list[Participant]]]],
    actors: dict[str, ActorHandle],
    labels: dict[str, str],
    res: Any,
) -> dict[str, RingHostReply]:
    def request(items: list[tuple[ChannelPlan, list[Participant]]]) -> RingHostRequest:
        return RingHostRequest(
            graph_id=graph_id, channels=[c for c, _ in items], num_readers=[len(r) for _, r in items]
        )

    refs: dict[str, Any] = {
        host: actors[host].__ray_call__.remote(_hosting.host_rings, request(items).SerializeToString())
        for host, items in hosts.items()
        if host != _DRIVER
    }
    replies: dict[str, RingHostReply] = {}
    if _DRIVER in hosts:
        replies[_DRIVER] = _host_here(graph_id, hosts[_DRIVER], res)
    for host, ref in refs.items():
        replies[host] = RingHostReply.FromString(ray.get(ref, timeout=HOST_TIMEOUT_S))
    failed = [f"{labels.get(h, 'the driver')}: {r.error}" for h, r in replies.items() if r.error]
    if failed:
        raise RayChannelError(
            "compiled graph setup failed: cannot host cross-node rings on " + "; ".join(failed)
        )
    return replies


def _host_here(graph_id: str, items: list[tuple[ChannelPlan, list[Participant]]], res: Any) -> RingHostReply:
    """The caller's rings: in ``res.rings``, so that teardown closes them with the others."""
    server = _hosting.acquire_server()
    res.endpoints.append(_ServerUse())  # released at teardown: the last graph stops it
    reply = RingHostReply(address=server.address)
    for ch, readers in items:
        ring = _hosting.make_ring(ch, len(readers))
        res.rings[ch.channel_id] = ring
        sid = _hosting.stream_id(graph_id, ch.channel_id)
        server.add_ring(sid, ring.spec)
        res.endpoints.append(_Registration(server, sid))
        spec = ring.spec
        reply.rings.add(
            channel_id=ch.channel_id,
            pid=spec.pid,
            ctrl_fd=spec.ctrl_fd,
            num_slots=spec.nslots,
            num_readers=spec.nreaders,
            reader_index=-1,
        )
    return reply


class _Registration:
    """A ring's name at this process's server, dropped at teardown (if no stream came)."""

    def __init__(self, server: Any, sid: str):
        self._server, self._sid = server, sid

    def close(self) -> None:
        self._server.remove_ring(self._sid)


class _ServerUse:
    def close(self) -> None:
        _hosting.release_server()


class FanOut(Channel):
    """The caller's input, written to each of its channels: the GRPC ones first, so that a
    write that times out on a remote ring has written nowhere (local rings have room:
    the caller never has more executions in flight than they have slots)."""

    def __init__(self, writers: list[Channel]):
        self._writers = writers

    def write(self, value: object, timeout_s: float | None = None) -> None:
        deadline = deadline_after(timeout_s)
        for w in self._writers:
            w.write(value, remaining(deadline))

    def read(self, timeout_s: float | None = None) -> object:
        raise TypeError(f"{self!r} cannot read: it is the other end of the channel")

    def close(self) -> None:
        for w in self._writers:
            w.close()


def open_input(plan: Plan, res: Any, cross: CrossNode) -> Channel:
    """The caller's write end of the input: every input channel, in one Channel."""
    writers: list[Channel] = []
    for cid in plan.input_channel_ids or [plan.input_channel_id]:
        if cid in cross.driver_writes:
            writers.insert(0, GrpcWriter(cross.driver_writes[cid]))
            res.writers.append(writers[0])  # closed with the rings: wakes a blocked execute
        else:
            writers.append(open_writer(res.rings[cid].spec))
    for w in writers:
        res.endpoints.append(w)
    return writers[0] if len(writers) == 1 else FanOut(writers)


def open_output_reader(plan: Plan, res: Any, cross: CrossNode, channel_id: str, index: int) -> ShmRingReader:
    """The caller's reader of an output channel (a GRPC one: the ring it hosts)."""
    spec: ShmRingSpec = res.rings[channel_id].spec
    return open_reader(spec, cross.reader_index.get(channel_id, index))
