"""raycg.proto: the control messages between the compiler and the runtime (generated
from plan.proto by scripts/proto_codegen.sh; never edit plan_pb2.py by hand)."""

from .plan_pb2 import (
    ActorPlan,
    ActorSetup,
    ActorStatus,
    ArgPlan,
    ChannelPlan,
    ErrorReport,
    KwArgPlan,
    Options,
    OutputPlan,
    Participant,
    Plan,
    Projection,
    ShmEndpoint,
    TaskPlan,
    Teardown,
    Transport,
)

__all__ = [
    "ActorPlan",
    "ActorSetup",
    "ActorStatus",
    "ArgPlan",
    "ChannelPlan",
    "ErrorReport",
    "KwArgPlan",
    "Options",
    "OutputPlan",
    "Participant",
    "Plan",
    "Projection",
    "ShmEndpoint",
    "TaskPlan",
    "Teardown",
    "Transport",
]
