"""Setting a plan up: every shared-memory ring is created here, in the caller (the owner
of all of them), and each actor gets its part of the plan in one ``__ray_call__``."""

from __future__ import annotations

import pickle
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayChannelError

from raycg.proto import (
    ActorSetup,
    ActorStatus,
    ChannelPlan,
    GrpcEndpoint,
    Plan,
    ShmEndpoint,
    TensorTransport,
    Transport,
)
from raycg.transports import ShmRing

from . import _collectives, _hosting
from ._actor import setup_actor

SETUP_TIMEOUT_S = 60.0


class Resources:
    """What a graph holds in this process, closable without the graph object (so that a
    finalizer can run it when the last reference to the graph is dropped)."""

    def __init__(self) -> None:
        self.rings: dict[str, ShmRing] = {}
        self.endpoints: list[Any] = []
        self.writers: list[Any] = []  # the caller's GRPC writers: closed with the rings
        self.groups: list[Any] = []  # communicator groups (CpuCommGroup), one per collective
        self.comm_specs: dict[str, dict[str, Any]] = {}  # actor id -> {collective id: spec}
        # Channels whose Communicator is Ray's CPU one: their tensors go through the ring.
        self.shm_communicators: set[str] = set()

    def close_rings(self) -> None:
        # Closing a ring sets its shared closed flag: every executor blocked on it, in
        # any process, wakes with ChannelClosed and exits. No Ray call needed. Closing a
        # communicator group aborts it: a member blocked in a collective wakes likewise.
        for ring in list(self.rings.values()):
            ring.close()
        for writer in self.writers:  # a write blocked on a remote ring wakes too
            writer.close()
        for group in self.groups:
            group.close()

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
        self.close_rings()
        self.endpoints.clear()
        self.rings.clear()
        self.groups.clear()


def refuse_unsupported(plan: Plan, through_shm: set[str] | frozenset[str] = frozenset()) -> None:
    """What the compiler plans but this runtime cannot run yet, refused before anything is
    created: the one place such refusals live (create_rings calls it first).

    Raises:
        NotImplementedError: tensors planned to go through NCCL or a user's Communicator,
            naming the edge; a collective over NCCL or a user's Communicator (see
            _collectives.refuse_unsupported). (GRPC channels, edges across Ray nodes, are
            set up by _crossnode.)
    """
    for ch in plan.channels:
        if ch.channel_id in through_shm:
            continue  # Ray's CPUCommunicator: tensors through shared memory, as in Ray
        if ch.tensor.transport in (TensorTransport.TENSOR_ACCELERATOR, TensorTransport.TENSOR_COMMUNICATOR):
            how = "NCCL" if ch.tensor.transport == TensorTransport.TENSOR_ACCELERATOR else "a Communicator"
            raise NotImplementedError(
                f"{ch.label or ch.channel_id}: its tensors are planned to go through {how} "
                f"({ch.tensor.written}), which raycg.runtime cannot run yet; use "
                "with_tensor_transport(transport='shm')"
            )
    _collectives.refuse_unsupported(plan)


def create_rings(plan: Plan, res: Resources) -> dict[str, list[ShmEndpoint]]:
    """Create the plan's shared-memory rings (its GRPC channels' rings are hosted on
    their reader nodes: _crossnode); return each actor's endpoints.

    Raises:
        NotImplementedError: see refuse_unsupported.
    """
    refuse_unsupported(plan, res.shm_communicators)
    endpoints: dict[str, list[ShmEndpoint]] = {}
    for ch in plan.channels:
        # A remote node's SHM channels get their rings there (_crossnode).
        if ch.transport == Transport.SHM and not _hosting.is_remote_shm(plan, ch):
            ring = ShmRing(ch.num_slots, len(ch.readers), ch.slot_size_bytes, name=ch.label or ch.channel_id)
            res.rings[ch.channel_id] = ring
            _add_endpoints(ch, ring, endpoints)
    res.comm_specs = _collectives.make_groups(plan, res.groups)
    return endpoints


def _add_endpoints(ch: ChannelPlan, ring: ShmRing, endpoints: dict[str, list[ShmEndpoint]]) -> None:
    spec = ring.spec
    base: dict[str, Any] = dict(
        channel_id=ch.channel_id,
        pid=spec.pid,
        ctrl_fd=spec.ctrl_fd,
        num_slots=spec.nslots,
        num_readers=spec.nreaders,
    )
    if ch.writer.WhichOneof("kind") == "actor_id":
        endpoints.setdefault(ch.writer.actor_id, []).append(ShmEndpoint(**base, reader_index=-1))
    for i, r in enumerate(ch.readers):
        if r.WhichOneof("kind") == "actor_id":
            endpoints.setdefault(r.actor_id, []).append(ShmEndpoint(**base, reader_index=i))


def driver_reader_index(plan: Plan, channel_id: str) -> int:
    ch = next(c for c in plan.channels if c.channel_id == channel_id)
    return next(i for i, r in enumerate(ch.readers) if r.WhichOneof("kind") == "driver")


def setup_actors(
    plan: Plan,
    actors: dict[str, ActorHandle],
    endpoints: dict[str, list[ShmEndpoint]],
    grpc: dict[str, list[GrpcEndpoint]] | None = None,
    comm_specs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, tuple[int, int]]:
    """Start every actor's executor, all in parallel; return actor id -> (pid, start time).

    Raises:
        RayChannelError: naming each actor whose setup failed (and why).
    """
    calls: list[tuple[Any, Any]] = []
    for ap in plan.actors:
        used = {c for t in ap.tasks for c in (*t.inputs, *t.outputs)}
        setup = ActorSetup(
            graph_id=plan.graph_id,
            actor=ap,
            channels=[c for c in plan.channels if c.channel_id in used],
            shm=endpoints.get(ap.actor_id, []),
            grpc=(grpc or {}).get(ap.actor_id, []),
        )
        # Communicator specs hold Python objects the proto cannot: pickled beside it.
        comms = (comm_specs or {}).get(ap.actor_id)
        extras = (
            b""
            if not comms
            else pickle.dumps(
                {"comms": comms, "timeout_s": _collectives.member_timeout(plan.options.get_timeout_s)}
            )
        )
        ref: Any = actors[ap.actor_id].__ray_call__.remote(setup_actor, setup.SerializeToString(), extras)
        calls.append((ap, ref))
    processes: dict[str, tuple[int, int]] = {}
    failures = []
    for ap, ref in calls:
        status = ActorStatus.FromString(ray.get(ref, timeout=SETUP_TIMEOUT_S))
        processes[ap.actor_id] = (status.pid, status.pid_start_time)
        if status.state != ActorStatus.READY:
            failures.append(f"{ap.actor_label}: {status.error.message}")
    if failures:
        raise RayChannelError("compiled graph setup failed on " + "; ".join(failures))
    return processes
