"""Setting a plan up: every shared-memory ring is created here, in the caller (the owner
of all of them), and each actor gets its part of the plan in one ``__ray_call__``."""

from __future__ import annotations

from typing import Any

import ray
from ray import cloudpickle
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

from . import _collectives, _communicators, _hosting
from ._actor import setup_actor
from ._comm_groups import UserSpec

SETUP_TIMEOUT_S = 60.0


class Resources:
    """What a graph holds in this process, closable without the graph object (so that a
    finalizer can run it when the last reference to the graph is dropped)."""

    def __init__(self) -> None:
        self.rings: dict[str, ShmRing] = {}
        self.endpoints: list[Any] = []
        self.writers: list[Any] = []  # the caller's GRPC writers: closed with the rings
        self.groups: list[Any] = []  # raycg's CPU communicator groups (CpuCommGroup)
        # actor id -> what its setup's extras say of communicators: "comms" (collective
        # id -> spec, _collectives), "groups", "edges", "collective_groups" (_communicators)
        self.comm_specs: dict[str, dict[str, Any]] = {}
        # communicator id -> the user's Communicator instance (from the compiler's IR)
        self.communicators: dict[str, Any] = {}

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


def refuse_unsupported(plan: Plan, comms: dict[str, Any] | None = None) -> None:
    """What the compiler plans but this runtime cannot run here, refused before anything
    is created: the one place such refusals live (create_rings calls it first).

    Args:
        comms: communicator id -> the user's instance (``Resources.communicators``).

    Raises:
        NotImplementedError: tensors planned through NCCL where this process cannot make
            NCCL ids (no cupy), naming the edge; see _communicators.refuse_unsupported
            and _collectives.refuse_unsupported. (GRPC channels, edges across Ray
            nodes, are set up by _crossnode.)
    """
    for ch in plan.channels:
        missing = ch.tensor.transport == TensorTransport.TENSOR_ACCELERATOR and _collectives.nccl_missing()
        if missing:
            raise NotImplementedError(
                f"{ch.label or ch.channel_id}: its tensors are planned to go through NCCL "
                f"({ch.tensor.written}), which needs NCCL ids from the driver: {missing}; "
                "or use with_tensor_transport(transport='shm')"
            )
    _communicators.refuse_unsupported(plan, comms or {})
    _collectives.refuse_unsupported(plan)


def create_rings(plan: Plan, res: Resources) -> dict[str, list[ShmEndpoint]]:
    """Create the plan's shared-memory rings (its GRPC channels' rings are hosted on
    their reader nodes: _crossnode); return each actor's endpoints.

    Raises:
        NotImplementedError: see refuse_unsupported.
    """
    refuse_unsupported(plan, res.communicators)
    endpoints: dict[str, list[ShmEndpoint]] = {}
    for ch in plan.channels:
        # A remote node's SHM channels get their rings there (_crossnode).
        if ch.transport == Transport.SHM and not _hosting.is_remote_shm(plan, ch):
            ring = ShmRing(ch.num_slots, len(ch.readers), ch.slot_size_bytes, name=ch.label or ch.channel_id)
            res.rings[ch.channel_id] = ring
            _add_endpoints(ch, ring, endpoints)
    comms = res.communicators
    shm = _communicators.shm_communicator_channels(plan, comms)  # Ray's CPUCommunicator: the ring
    res.comm_specs = _communicators.make_groups(plan, comms, shm, res.groups)
    for actor_id, specs in _collectives.make_groups(plan, res.groups).items():
        res.comm_specs.setdefault(actor_id, {})["comms"] = specs
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
        ValueError: a user's Communicator instance cannot be pickled (no actor was
            asked to set up).
    """
    # Every actor's extras first: one that cannot be pickled is refused before any
    # actor starts its part.
    member_timeout = _collectives.member_timeout(plan.options.get_timeout_s)
    extras = {ap.actor_id: _extras((comm_specs or {}).get(ap.actor_id), member_timeout) for ap in plan.actors}
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
        ref: Any = actors[ap.actor_id].__ray_call__.remote(
            setup_actor, setup.SerializeToString(), extras[ap.actor_id]
        )
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


def _extras(comms: dict[str, Any] | None, timeout_s: float | None) -> bytes:
    """An actor's communicator specs, pickled beside its plan: they hold Python objects
    the proto cannot (a user's Communicator instance among them), pickled by Ray's
    cloudpickle as Ray would.

    Raises:
        ValueError: a user's Communicator instance cannot be pickled, naming it.
    """
    if not comms:
        return b""
    try:
        return cloudpickle.dumps({**comms, "timeout_s": timeout_s})
    except Exception:
        for member in comms.get("groups", {}).values():
            if isinstance(member.spec, UserSpec):
                try:
                    cloudpickle.dumps(member.spec.communicator)
                except Exception as e:
                    raise ValueError(
                        f"{member.spec.written}: raycg hands a communicator to each of its actors "
                        f"pickled, and this one cannot be pickled: {type(e).__name__}: {e}"
                    ) from e
        raise
