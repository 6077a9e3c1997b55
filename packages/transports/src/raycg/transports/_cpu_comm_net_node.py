"""A cross-node CPU communicator's shared state: one part per node, and the group's spec.

The members of a :class:`~raycg.transports._cpu_comm_net.CpuNetCommunicator` sit on
several nodes. Each node's part, a :class:`CpuNetNode`, is made by a process of that
node (memfds are reached through /proc/<pid>/fd, on their own node only) and holds:

- the node's :class:`CpuCommGroup` segment, shared by that node's members (with its
  same-node p2p rings if asked);
- one ring per other node, fed by that node's *leader* (its lowest rank) over a gRPC
  stream and read by this node's leader: the links the leaders exchange data on;
- with p2p, one ring per (sender on another node, receiver here) pair.

Each ring is registered at a :class:`GrpcServer` of the making process (``add_ring``),
under a stream id made of the group's id and the ring's role, so the writer on the
other node names it. The parts' picklable specs, joined in node order into a
:class:`CpuNetSpec`, are what every member needs to join.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from ._cpu_comm_segment import DEFAULT_CAPACITY_BYTES, CpuCommGroup, CpuCommSpec
from ._grpc_server import GrpcServer
from ._shm_ring import ShmRing, ShmRingSpec

# Values a link carries per collective and direction: at most two (contributions, then
# a reduced chunk), and a leader runs at most one collective ahead of its peers, so
# four slots never make a write wait for room.
LINK_SLOTS = 4
P2P_SLOTS = 4
_P2P_SLOT_BYTES = 64 << 10


def link_id(group_id: str, src_node: int, dst_node: int) -> str:
    """The stream id of the link from ``src_node``'s leader to ``dst_node``'s."""
    return f"{group_id}/link/{src_node}-{dst_node}"


def p2p_id(group_id: str, src_rank: int, dst_rank: int) -> str:
    """The stream id of the cross-node p2p ring from ``src_rank`` to ``dst_rank``."""
    return f"{group_id}/p2p/{src_rank}-{dst_rank}"


@dataclasses.dataclass(frozen=True)
class NetNodeSpec:
    """One node's part (picklable): its server, its segment, the rings it hosts."""

    address: str
    local: CpuCommSpec
    inbound: dict[str, ShmRingSpec]  # stream id -> the ring it feeds


@dataclasses.dataclass(frozen=True)
class CpuNetSpec:
    """Everything a member of a cross-node CPU communicator needs to join (picklable).

    Attributes:
        name: shown in errors.
        group_id: unique among the groups of every server involved (in stream ids).
        ranks: each node's ranks, ascending (its leader first), in node order.
        nodes: each node's part, in the same order.

    Raises:
        ValueError: the ranks are not 0 .. world_size - 1, each on exactly one node, or
            a part does not match its node.
    """

    name: str
    group_id: str
    ranks: tuple[tuple[int, ...], ...]
    nodes: tuple[NetNodeSpec, ...]

    def __post_init__(self) -> None:
        check_ranks(self.ranks)
        if len(self.nodes) != len(self.ranks):
            raise ValueError(f"{self.name!r}: {len(self.ranks)} nodes of ranks but {len(self.nodes)} parts")
        for n, (ranks, part) in enumerate(zip(self.ranks, self.nodes)):
            if part.local.world_size != len(ranks):
                raise ValueError(
                    f"{self.name!r}: node {n} has ranks {list(ranks)} but its segment is for "
                    f"{part.local.world_size} members"
                )

    @property
    def world_size(self) -> int:
        return sum(len(r) for r in self.ranks)

    def node_of(self, rank: int) -> int:
        """The index of the node ``rank`` runs on."""
        return next(n for n, ranks in enumerate(self.ranks) if rank in ranks)


def check_ranks(ranks: Sequence[Sequence[int]]) -> None:
    """Raises ValueError unless ``ranks`` puts 0 .. world_size - 1 on the nodes, each
    once, ascending within a node, and no node is empty."""
    flat = [r for node in ranks for r in node]
    if not ranks or any(not node for node in ranks):
        raise ValueError(f"every node needs at least one rank, got {[list(n) for n in ranks]}")
    if sorted(flat) != list(range(len(flat))):
        raise ValueError(f"ranks {[list(n) for n in ranks]} are not 0..{len(flat) - 1}, each once")
    if any(list(node) != sorted(node) for node in ranks):
        raise ValueError(f"each node's ranks must be ascending, got {[list(n) for n in ranks]}")


class CpuNetNode:
    """Node ``node``'s part of a cross-node CPU communicator, made by a process there:
    hand :attr:`spec` to :func:`join_specs` with the other nodes' parts; close it once
    this node's members are done (that aborts them, as CpuCommGroup's close does).

    Args:
        ranks: each node's ranks (see :class:`CpuNetSpec`).
        node: which of them this is.
        server: where this node's rings are served (listening on the node's own address,
            loopback in tests); it must outlive the part.
        group_id: the group's id, the same on every node (a fresh one if None: pass it on).
        name: shown in errors and in /proc/<pid>/fd.
        capacity_bytes: the segment's bytes per member and epoch (CpuCommGroup's).
        p2p: make the rings send/recv need.

    Raises:
        ValueError: bad ``ranks`` or ``node``.
    """

    def __init__(
        self,
        ranks: Sequence[Sequence[int]],
        node: int,
        server: GrpcServer,
        *,
        group_id: str | None = None,
        name: str = "comm",
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        p2p: bool = True,
    ):
        check_ranks(ranks)
        if not 0 <= node < len(ranks):
            raise ValueError(f"node {node} out of range for {len(ranks)} nodes")
        self.group_id = group_id or uuid.uuid4().hex
        self._server = server
        self._rings: list[tuple[str, ShmRing]] = []
        mine = ranks[node]
        self.group = CpuCommGroup(len(mine), capacity_bytes=capacity_bytes, p2p=p2p, name=f"{name}.n{node}")
        try:
            # A link carries up to a node's whole contribution: size its slots for it
            # (memfd pages cost nothing until touched), so no value makes it grow.
            link_bytes = capacity_bytes * max(len(r) for r in ranks) + (64 << 10)
            for src in range(len(ranks)):
                if src != node:
                    sid = link_id(self.group_id, src, node)
                    self._host(sid, ShmRing(LINK_SLOTS, 1, link_bytes, name=f"{name}.link{src}-{node}"))
            if p2p:
                for src in (r for n, rs in enumerate(ranks) if n != node for r in rs):
                    for dst in mine:
                        sid = p2p_id(self.group_id, src, dst)
                        self._host(
                            sid, ShmRing(P2P_SLOTS, 1, _P2P_SLOT_BYTES, name=f"{name}.p2p.{src}-{dst}")
                        )
        except BaseException:
            self.close()
            raise
        self.spec = NetNodeSpec(
            server.address, self.group.spec, {sid: ring.spec for sid, ring in self._rings}
        )

    def _host(self, sid: str, ring: ShmRing) -> None:
        self._rings.append((sid, ring))
        self._server.add_ring(sid, ring.spec)

    def close(self) -> None:
        """Abort this node's members, close its rings (their streams end). Idempotent."""
        self.group.close()
        for sid, ring in self._rings:
            self._server.remove_ring(sid)
            ring.close()
        self._rings.clear()

    def __enter__(self) -> CpuNetNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def join_specs(
    name: str, group_id: str, ranks: Sequence[Sequence[int]], parts: Sequence[NetNodeSpec]
) -> CpuNetSpec:
    """The group's spec, from every node's part (in node order).

    Raises:
        ValueError: see :class:`CpuNetSpec`.
    """
    return CpuNetSpec(name, group_id, tuple(tuple(r) for r in ranks), tuple(parts))


__all__ = ["CpuNetNode", "CpuNetSpec", "NetNodeSpec", "join_specs", "link_id", "p2p_id"]
