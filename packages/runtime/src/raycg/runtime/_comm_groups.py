"""Communicator groups as their members see them: the picklable specs the caller hands
out at setup (``_communicators``), and one actor's joined communicators of one graph.

A group is one of:
- raycg's CPU communicator (``CpuCommSpec``: the caller owns the group's segment and
  rings, as it owns every ring) or raycg's NCCL one (:class:`NcclSpec`: a unique id from
  the driver): the NCCL path and its CPU twin are the same code with another
  communicator plugged in;
- a user's Ray ``Communicator`` instance (:class:`UserSpec`): pickled to each member,
  which ``initialize(rank)``s its copy, as Ray does, behind
  ``raycg.transports.as_communicator`` (Ray's ``ReduceOp`` for ours).

Each actor joins each group once (:class:`Joined`), however many edges and collectives
of the graph it serves; the executor aborts them all when the graph closes (a blocked
call wakes) and destroys them when its loop has ended.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raycg.transports import (
    Communicator,
    CpuCommSpec,
    CpuCommunicator,
    NcclCommunicator,
    ReduceOp,
    as_communicator,
)


@dataclasses.dataclass(frozen=True)
class NcclSpec:
    """What a member of a raycg NCCL group needs to join (picklable)."""

    unique_id: tuple[int, ...]
    world_size: int


@dataclasses.dataclass(frozen=True)
class UserSpec:
    """A user's Communicator instance (pickled with the spec), as the plan names it."""

    communicator: Any
    written: str


@dataclasses.dataclass(frozen=True)
class Member:
    """This actor's place in one group."""

    spec: CpuCommSpec | NcclSpec | UserSpec
    rank: int


@dataclasses.dataclass(frozen=True)
class EdgeRanks:
    """A tensor edge over a group: the group, the writer's rank, the readers' ranks (in
    the order of the channel's readers)."""

    group: str
    writer: int
    readers: tuple[int, ...]


def _ray_reduce_op(op: ReduceOp) -> Any:
    from ray.experimental.util.types import ReduceOp as RayReduceOp

    return RayReduceOp[op.name]


def join(spec: CpuCommSpec | NcclSpec | UserSpec, rank: int, timeout_s: float | None) -> Communicator:
    """This member's communicator of a group, joined as ``rank``.

    Args:
        timeout_s: the default bound of each blocking call of raycg's communicators (a
            user's cannot be bounded from here).

    Raises:
        ImportError: NCCL without cupy. Anything the user's ``initialize`` raises.
    """
    if isinstance(spec, NcclSpec):  # on this actor's GPU (Ray made it the only one)
        return NcclCommunicator(spec.unique_id, spec.world_size, rank, timeout_s=timeout_s)
    if isinstance(spec, CpuCommSpec):
        return CpuCommunicator(spec, rank, timeout_s=timeout_s)
    comm = as_communicator(spec.communicator, reduce_op=_ray_reduce_op)
    comm.initialize(rank)
    return comm


def device_of(comm: Communicator) -> str:
    """The torch device type a communicator moves tensors on: ``"cpu"`` for a CPU one
    (raycg's, or a user's whose transport name says so), else ``"cuda"``."""
    return "cpu" if comm.get_transport_name() == "cpu" else "cuda"


class Joined:
    """One actor's communicators of one graph, each joined on first use.

    Args:
        members: group id -> this actor's :class:`Member` (from the setup's extras).
        timeout_s: see :func:`join`.
    """

    def __init__(self, members: dict[str, Member], timeout_s: float | None):
        self._members, self._timeout_s = members, timeout_s
        self._comms: dict[str, Communicator] = {}

    def join_all(self) -> None:
        """Join every group now, in the order of their ids (the same on every member:
        joining a NCCL group, or a user's, may wait until all its members join)."""
        for group in sorted(self._members):
            self.get(group)

    def get(self, group: str) -> Communicator:
        """The communicator of ``group``.

        Raises:
            RuntimeError: the setup gave this actor no such group (a bug of ours).
        """
        comm = self._comms.get(group)
        if comm is None:
            member = self._members.get(group)
            if member is None:
                raise RuntimeError(f"no communicator group {group!r} was set up for this actor")
            comm = self._comms[group] = join(member.spec, member.rank, self._timeout_s)
        return comm

    def abort(self) -> None:
        """Wake every call blocked in any of them (any thread; idempotent)."""
        for comm in list(self._comms.values()):
            comm.abort()

    def destroy(self) -> None:
        """Leave every group (the executor thread, once its loop ended)."""
        comms, self._comms = list(self._comms.values()), {}
        for comm in comms:
            comm.destroy()
