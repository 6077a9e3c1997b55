"""A node leader's links to the other nodes' leaders: the cross-node half of a
:class:`~raycg.transports._cpu_comm_net.CpuNetCommunicator`.

Each link is the project's cross-node channel: a :class:`GrpcWriter` to the other
leader's node, whose receiver writes each value into a ring there
(:class:`~raycg.transports._cpu_comm_net_node.CpuNetNode` hosts it), and the other
direction's ring here, read with a :class:`ShmRingReader`. So the links inherit that
channel's order, credit-based flow control, keepalives and broken-stream detection,
and a value (a list of tensors) is serialized once and read zero-copy.

Waits here are sliced (``POLL_S``) so that an abort of this node's segment by another
member, which wakes no ring, ends them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._cpu_comm_net_node import LINK_SLOTS, CpuNetSpec, link_id
from ._deadline import remaining
from ._errors import ChannelClosed, ChannelError, ChannelTimeout
from ._grpc_config import POLL_S
from ._grpc_stream import GrpcTarget
from ._grpc_writer import GrpcChannelSpec, GrpcWriter
from ._shm_reader import ShmRingReader


class Links:
    """Node ``node``'s leader's end of every link.

    Args:
        spec: the group.
        node: this leader's node.
        aborted: whether this member's group was aborted (checked between slices).

    Raises:
        ChannelBroken: another node's server cannot be reached.
    """

    def __init__(self, spec: CpuNetSpec, node: int, aborted: Callable[[], bool]):
        self._spec, self._node, self._aborted = spec, node, aborted
        self.peers = [j for j in range(len(spec.ranks)) if j != node]
        self._out: dict[int, GrpcWriter] = {}
        self._in: dict[int, ShmRingReader] = {}
        try:
            inbound = spec.nodes[node].inbound
            for j in self.peers:
                self._in[j] = ShmRingReader(inbound[link_id(spec.group_id, j, node)], 0)
            for j in self.peers:
                target = GrpcTarget(spec.nodes[j].address, link_id(spec.group_id, node, j))
                self._out[j] = GrpcWriter(
                    GrpcChannelSpec(f"{spec.name}.link{node}-{j}", LINK_SLOTS, (target,))
                )
        except BaseException:
            self.close()
            raise

    def send(self, peer: int, value: object, deadline: float, what: str) -> None:
        """``value`` to ``peer``'s leader (it is copied into messages before this returns).

        Raises:
            ChannelTimeout: the link stayed full until ``deadline``.
            ChannelClosed, ChannelBroken: the link was closed (an abort there) or failed.
        """
        try:
            self._out[peer].write(value, remaining(deadline))
        except ChannelTimeout as e:
            raise ChannelTimeout(f"{self._where(what)}: the link to node {peer} stayed full ({e})") from None

    def send_all(self, value: object, deadline: float, what: str) -> None:
        for j in self.peers:
            self.send(j, value, deadline, what)

    def recv(self, peer: int, deadline: float, what: str) -> Any:
        """The next value from ``peer``'s leader (zero-copy: drop it before the next).

        Raises:
            ChannelTimeout: nothing came until ``deadline``.
            ChannelClosed: this node's group was aborted, or the link closed (an abort
                on ``peer``'s node).
            ChannelBroken: the link's stream failed (that node lost, its leader dead).
        """
        reader = self._in[peer]
        while True:
            try:
                return reader.read(min(remaining(deadline), POLL_S))
            except ChannelTimeout:
                if self._aborted():
                    raise ChannelClosed(f"communicator {self._spec.name!r} was aborted") from None
                if remaining(deadline) <= 0:
                    ranks = ", ".join(map(str, self._spec.ranks[peer]))
                    raise ChannelTimeout(
                        f"{self._where(what)}: nothing came from node {peer} (ranks {ranks}) in time; "
                        "the communicator is aborted"
                    ) from None

    def check(self) -> None:
        """Raise if a link from another node was closed or broke (its group aborted)."""
        for reader in self._in.values():
            reader._check_closed()  # the ring's shared closed word: no value is consumed

    def _where(self, what: str) -> str:
        leader = self._spec.ranks[self._node][0]
        return f"communicator {self._spec.name!r}: rank {leader} (node {self._node}'s leader) in {what}"

    def close_inbound(self) -> None:
        """Close the links from the other nodes (never blocks): their leaders' next
        write there raises ChannelClosed. Idempotent."""
        for r in self._in.values():
            try:
                r.close()
            except ChannelError:
                pass

    def close(self) -> None:
        """Close every link: the other leaders' reads and waits end with ChannelClosed
        (within a slice). Idempotent; returns within about a second (each writer's
        close waits for its receiver to close the ring there)."""
        self.close_inbound()
        for w in self._out.values():
            w.close()


__all__ = ["Links"]
