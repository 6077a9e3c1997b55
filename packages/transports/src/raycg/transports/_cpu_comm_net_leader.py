"""A node leader's part of each collective of a
:class:`~raycg.transports._cpu_comm_net.CpuNetCommunicator`: what it exchanges with the
other nodes' leaders once its node's members have arrived, and how it fills its node's
result region from that.

``regions`` is the node's segment viewed as the collective's dtype: one contribution
region per member of the node (by its index there), then the result region. Every
reduction runs in rank order over every rank's own contribution, as
``functools.reduce`` over torch's op does, so results equal torch's reference bit for
bit (the module docstring of _cpu_comm_net says why and what crosses).
"""

from __future__ import annotations

from typing import Any

from ._communicator import ReduceOp
from ._cpu_comm import _reduce
from ._cpu_comm_net_links import Links
from ._cpu_comm_net_node import CpuNetSpec

# Above this, an allreduce's piece is split by nodes (two trips, less data); below, the
# leaders swap whole contributions (one trip).
SPLIT_MIN_BYTES = 64 << 10


class Leader:
    """Node ``node``'s leader: its links (:class:`Links`) and its side of each collective.

    Raises:
        ChannelBroken: another node's server cannot be reached.
    """

    def __init__(self, spec: CpuNetSpec, node: int, links: Links):
        self.spec, self.node, self.links = spec, node, links
        self.where = {r: (n, i) for n, ranks in enumerate(spec.ranks) for i, r in enumerate(ranks)}
        self.nlocal = len(spec.ranks[node])

    def allreduce(self, k: int, op: ReduceOp, regions: list[Any], deadline: float, what: str) -> None:
        """The result region's first ``k`` elements = the reduction of every rank's."""
        links, world, n = self.links, self.spec.world_size, len(self.spec.ranks)
        local, result = [r[:k] for r in regions[: self.nlocal]], regions[self.nlocal]
        if n == 1 or k * result.element_size() <= SPLIT_MIN_BYTES:
            got = self._swap(local, deadline, what)
            _reduce(op, self._in_rank_order(local, got), result[:k], world)
            return
        # Node j reduces chunk j: it gets that chunk of every other node's contributions,
        # then sends its reduced chunk back to every other node.
        bounds = [k * j // n for j in range(n + 1)]
        for j in links.peers:
            links.send(j, [t[bounds[j] : bounds[j + 1]] for t in local], deadline, what)
        got = {j: links.recv(j, deadline, what) for j in links.peers}
        lo, hi = bounds[self.node], bounds[self.node + 1]
        _reduce(op, self._in_rank_order([t[lo:hi] for t in local], got), result[lo:hi], world)
        del got  # unpins the links' slots
        links.send_all(result[lo:hi], deadline, what)
        for j in links.peers:
            result[bounds[j] : bounds[j + 1]].copy_(links.recv(j, deadline, what))

    def allgather(self, k: int, regions: list[Any], deadline: float, what: str) -> None:
        """Every other node's ``k``-element pieces into the result region, rank r's at r * k."""
        result = regions[self.nlocal]
        got = self._swap([r[:k] for r in regions[: self.nlocal]], deadline, what)
        for n, pieces in got.items():
            for r, piece in zip(self.spec.ranks[n], pieces, strict=True):
                result[r * k : (r + 1) * k].copy_(piece)

    def reducescatter(self, k: int, op: ReduceOp, regions: list[Any], deadline: float, what: str) -> None:
        """For this node's member i (rank r), the reduction of every rank's chunk r (each
        region holds the piece's world_size chunks of ``k``, chunk s at s * k) into the
        result region at i * k."""
        links, world, mine = self.links, self.spec.world_size, self.spec.ranks[self.node]
        local = regions[: self.nlocal]
        for j in links.peers:  # for each of our members, the chunks of j's members
            links.send(j, [t[r * k : (r + 1) * k] for t in local for r in self.spec.ranks[j]], deadline, what)
        got = {j: links.recv(j, deadline, what) for j in links.peers}
        for li, r in enumerate(mine):  # its chunk, from every rank, in rank order
            inputs = []
            for s in range(world):
                n, i = self.where[s]
                inputs.append(local[i][r * k : (r + 1) * k] if n == self.node else got[n][i * len(mine) + li])
            _reduce(op, inputs, regions[self.nlocal][li * k : (li + 1) * k], world)

    def broadcast(self, root_rank: int, k: int, regions: list[Any], deadline: float, what: str) -> None:
        """The root's piece: sent to every other node from its own, into the result
        region on the others."""
        root_node, root_index = self.where[root_rank]
        if root_node == self.node:
            self.links.send_all(regions[root_index][:k], deadline, what)
        else:
            regions[self.nlocal][:k].copy_(self.links.recv(root_node, deadline, what))

    def _swap(self, value: object, deadline: float, what: str) -> dict[int, Any]:
        """``value`` to every other leader; what each sent (node -> its value)."""
        self.links.send_all(value, deadline, what)
        return {j: self.links.recv(j, deadline, what) for j in self.links.peers}

    def _in_rank_order(self, local: list[Any], got: dict[int, Any]) -> list[Any]:
        """Every rank's contribution, in rank order: this node's, and the others' ``got``."""
        out = []
        for r in range(self.spec.world_size):
            n, i = self.where[r]
            out.append(local[i] if n == self.node else got[n][i])
        return out


__all__ = ["SPLIT_MIN_BYTES", "Leader"]
