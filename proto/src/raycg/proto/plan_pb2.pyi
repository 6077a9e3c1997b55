from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSPORT_UNSPECIFIED: _ClassVar[Transport]
    INPROC: _ClassVar[Transport]
    SHM: _ClassVar[Transport]
    GRPC: _ClassVar[Transport]

class TensorTransport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_TRANSPORT_UNSPECIFIED: _ClassVar[TensorTransport]
    TENSOR_SHM: _ClassVar[TensorTransport]
    TENSOR_ACCELERATOR: _ClassVar[TensorTransport]
    TENSOR_COMMUNICATOR: _ClassVar[TensorTransport]

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_DEFAULT: _ClassVar[Device]
    DEVICE_CPU: _ClassVar[Device]
    DEVICE_GPU: _ClassVar[Device]

class CollectiveKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTIVE_KIND_UNSPECIFIED: _ClassVar[CollectiveKind]
    ALLREDUCE: _ClassVar[CollectiveKind]
    ALLGATHER: _ClassVar[CollectiveKind]
    REDUCESCATTER: _ClassVar[CollectiveKind]
    BROADCAST: _ClassVar[CollectiveKind]
TRANSPORT_UNSPECIFIED: Transport
INPROC: Transport
SHM: Transport
GRPC: Transport
TENSOR_TRANSPORT_UNSPECIFIED: TensorTransport
TENSOR_SHM: TensorTransport
TENSOR_ACCELERATOR: TensorTransport
TENSOR_COMMUNICATOR: TensorTransport
DEVICE_DEFAULT: Device
DEVICE_CPU: Device
DEVICE_GPU: Device
COLLECTIVE_KIND_UNSPECIFIED: CollectiveKind
ALLREDUCE: CollectiveKind
ALLGATHER: CollectiveKind
REDUCESCATTER: CollectiveKind
BROADCAST: CollectiveKind

class TensorHint(_message.Message):
    __slots__ = ("transport", "device", "static_shape", "direct_return", "written", "communicator_id")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATIC_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DIRECT_RETURN_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    COMMUNICATOR_ID_FIELD_NUMBER: _ClassVar[int]
    transport: TensorTransport
    device: Device
    static_shape: bool
    direct_return: bool
    written: str
    communicator_id: str
    def __init__(self, transport: _Optional[_Union[TensorTransport, str]] = ..., device: _Optional[_Union[Device, str]] = ..., static_shape: _Optional[bool] = ..., direct_return: _Optional[bool] = ..., written: _Optional[str] = ..., communicator_id: _Optional[str] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("driver", "actor_id")
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    driver: bool
    actor_id: str
    def __init__(self, driver: _Optional[bool] = ..., actor_id: _Optional[str] = ...) -> None: ...

class ChannelPlan(_message.Message):
    __slots__ = ("channel_id", "transport", "writer", "readers", "num_slots", "slot_size_bytes", "label", "tensor")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    transport: Transport
    writer: Participant
    readers: _containers.RepeatedCompositeFieldContainer[Participant]
    num_slots: int
    slot_size_bytes: int
    label: str
    tensor: TensorHint
    def __init__(self, channel_id: _Optional[str] = ..., transport: _Optional[_Union[Transport, str]] = ..., writer: _Optional[_Union[Participant, _Mapping]] = ..., readers: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., num_slots: _Optional[int] = ..., slot_size_bytes: _Optional[int] = ..., label: _Optional[str] = ..., tensor: _Optional[_Union[TensorHint, _Mapping]] = ...) -> None: ...

class Projection(_message.Message):
    __slots__ = ("index", "key", "first_arg")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FIRST_ARG_FIELD_NUMBER: _ClassVar[int]
    index: int
    key: str
    first_arg: bool
    def __init__(self, index: _Optional[int] = ..., key: _Optional[str] = ..., first_arg: _Optional[bool] = ...) -> None: ...

class ArgPlan(_message.Message):
    __slots__ = ("constant", "input_slot", "projections")
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SLOT_FIELD_NUMBER: _ClassVar[int]
    PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    constant: bytes
    input_slot: int
    projections: _containers.RepeatedCompositeFieldContainer[Projection]
    def __init__(self, constant: _Optional[bytes] = ..., input_slot: _Optional[int] = ..., projections: _Optional[_Iterable[_Union[Projection, _Mapping]]] = ...) -> None: ...

class KwArgPlan(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: ArgPlan
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[ArgPlan, _Mapping]] = ...) -> None: ...

class TaskPlan(_message.Message):
    __slots__ = ("task_id", "method", "display_name", "inputs", "args", "kwargs", "num_returns", "outputs", "collective", "prefetch")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    NUM_RETURNS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    method: str
    display_name: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedCompositeFieldContainer[ArgPlan]
    kwargs: _containers.RepeatedCompositeFieldContainer[KwArgPlan]
    num_returns: int
    outputs: _containers.RepeatedScalarFieldContainer[str]
    collective: CollectivePlan
    prefetch: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[int] = ..., method: _Optional[str] = ..., display_name: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[_Union[ArgPlan, _Mapping]]] = ..., kwargs: _Optional[_Iterable[_Union[KwArgPlan, _Mapping]]] = ..., num_returns: _Optional[int] = ..., outputs: _Optional[_Iterable[str]] = ..., collective: _Optional[_Union[CollectivePlan, _Mapping]] = ..., prefetch: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectivePlan(_message.Message):
    __slots__ = ("collective_id", "kind", "reduce_op", "members", "rank", "src_rank", "transport", "communicator_id")
    COLLECTIVE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REDUCE_OP_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SRC_RANK_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    COMMUNICATOR_ID_FIELD_NUMBER: _ClassVar[int]
    collective_id: str
    kind: CollectiveKind
    reduce_op: str
    members: _containers.RepeatedScalarFieldContainer[str]
    rank: int
    src_rank: int
    transport: str
    communicator_id: str
    def __init__(self, collective_id: _Optional[str] = ..., kind: _Optional[_Union[CollectiveKind, str]] = ..., reduce_op: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., rank: _Optional[int] = ..., src_rank: _Optional[int] = ..., transport: _Optional[str] = ..., communicator_id: _Optional[str] = ...) -> None: ...

class CommunicatorPlan(_message.Message):
    __slots__ = ("communicator_id", "members", "written")
    COMMUNICATOR_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    communicator_id: str
    members: _containers.RepeatedScalarFieldContainer[str]
    written: str
    def __init__(self, communicator_id: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., written: _Optional[str] = ...) -> None: ...

class ActorPlan(_message.Message):
    __slots__ = ("actor_id", "actor_label", "node_id", "tasks", "gpu_ids")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_LABEL_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    actor_label: str
    node_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskPlan]
    gpu_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_id: _Optional[str] = ..., actor_label: _Optional[str] = ..., node_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskPlan, _Mapping]]] = ..., gpu_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class OutputPlan(_message.Message):
    __slots__ = ("channel_id", "projections", "display_name")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    projections: _containers.RepeatedCompositeFieldContainer[Projection]
    display_name: str
    def __init__(self, channel_id: _Optional[str] = ..., projections: _Optional[_Iterable[_Union[Projection, _Mapping]]] = ..., display_name: _Optional[str] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("submit_timeout_s", "get_timeout_s", "buffer_size_bytes", "max_inflight_executions", "max_buffered_results", "enable_asyncio", "overlap_gpu_communication")
    SUBMIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    GET_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BUFFERED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ENABLE_ASYNCIO_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_GPU_COMMUNICATION_FIELD_NUMBER: _ClassVar[int]
    submit_timeout_s: float
    get_timeout_s: float
    buffer_size_bytes: int
    max_inflight_executions: int
    max_buffered_results: int
    enable_asyncio: bool
    overlap_gpu_communication: bool
    def __init__(self, submit_timeout_s: _Optional[float] = ..., get_timeout_s: _Optional[float] = ..., buffer_size_bytes: _Optional[int] = ..., max_inflight_executions: _Optional[int] = ..., max_buffered_results: _Optional[int] = ..., enable_asyncio: _Optional[bool] = ..., overlap_gpu_communication: _Optional[bool] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("graph_id", "options", "channels", "actors", "input_channel_id", "outputs", "multi_output", "driver_node_id", "input_channel_ids", "communicators")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MULTI_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DRIVER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNEL_IDS_FIELD_NUMBER: _ClassVar[int]
    COMMUNICATORS_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    options: Options
    channels: _containers.RepeatedCompositeFieldContainer[ChannelPlan]
    actors: _containers.RepeatedCompositeFieldContainer[ActorPlan]
    input_channel_id: str
    outputs: _containers.RepeatedCompositeFieldContainer[OutputPlan]
    multi_output: bool
    driver_node_id: str
    input_channel_ids: _containers.RepeatedScalarFieldContainer[str]
    communicators: _containers.RepeatedCompositeFieldContainer[CommunicatorPlan]
    def __init__(self, graph_id: _Optional[str] = ..., options: _Optional[_Union[Options, _Mapping]] = ..., channels: _Optional[_Iterable[_Union[ChannelPlan, _Mapping]]] = ..., actors: _Optional[_Iterable[_Union[ActorPlan, _Mapping]]] = ..., input_channel_id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputPlan, _Mapping]]] = ..., multi_output: _Optional[bool] = ..., driver_node_id: _Optional[str] = ..., input_channel_ids: _Optional[_Iterable[str]] = ..., communicators: _Optional[_Iterable[_Union[CommunicatorPlan, _Mapping]]] = ...) -> None: ...

class ShmEndpoint(_message.Message):
    __slots__ = ("channel_id", "pid", "ctrl_fd", "num_slots", "num_readers", "reader_index")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CTRL_FD_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    NUM_READERS_FIELD_NUMBER: _ClassVar[int]
    READER_INDEX_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    pid: int
    ctrl_fd: int
    num_slots: int
    num_readers: int
    reader_index: int
    def __init__(self, channel_id: _Optional[str] = ..., pid: _Optional[int] = ..., ctrl_fd: _Optional[int] = ..., num_slots: _Optional[int] = ..., num_readers: _Optional[int] = ..., reader_index: _Optional[int] = ...) -> None: ...

class GrpcTargetPlan(_message.Message):
    __slots__ = ("address", "stream_id")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    address: str
    stream_id: str
    def __init__(self, address: _Optional[str] = ..., stream_id: _Optional[str] = ...) -> None: ...

class GrpcEndpoint(_message.Message):
    __slots__ = ("channel_id", "num_slots", "targets")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    num_slots: int
    targets: _containers.RepeatedCompositeFieldContainer[GrpcTargetPlan]
    def __init__(self, channel_id: _Optional[str] = ..., num_slots: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[GrpcTargetPlan, _Mapping]]] = ...) -> None: ...

class RingHostRequest(_message.Message):
    __slots__ = ("graph_id", "channels", "num_readers")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_READERS_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    channels: _containers.RepeatedCompositeFieldContainer[ChannelPlan]
    num_readers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, graph_id: _Optional[str] = ..., channels: _Optional[_Iterable[_Union[ChannelPlan, _Mapping]]] = ..., num_readers: _Optional[_Iterable[int]] = ...) -> None: ...

class RingHostReply(_message.Message):
    __slots__ = ("address", "rings", "error")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    address: str
    rings: _containers.RepeatedCompositeFieldContainer[ShmEndpoint]
    error: str
    def __init__(self, address: _Optional[str] = ..., rings: _Optional[_Iterable[_Union[ShmEndpoint, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ActorSetup(_message.Message):
    __slots__ = ("graph_id", "actor", "channels", "shm", "grpc")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    actor: ActorPlan
    channels: _containers.RepeatedCompositeFieldContainer[ChannelPlan]
    shm: _containers.RepeatedCompositeFieldContainer[ShmEndpoint]
    grpc: _containers.RepeatedCompositeFieldContainer[GrpcEndpoint]
    def __init__(self, graph_id: _Optional[str] = ..., actor: _Optional[_Union[ActorPlan, _Mapping]] = ..., channels: _Optional[_Iterable[_Union[ChannelPlan, _Mapping]]] = ..., shm: _Optional[_Iterable[_Union[ShmEndpoint, _Mapping]]] = ..., grpc: _Optional[_Iterable[_Union[GrpcEndpoint, _Mapping]]] = ...) -> None: ...

class Teardown(_message.Message):
    __slots__ = ("graph_id", "reason", "timeout_s")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    reason: str
    timeout_s: float
    def __init__(self, graph_id: _Optional[str] = ..., reason: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ErrorReport(_message.Message):
    __slots__ = ("graph_id", "actor_id", "task_display_name", "kind", "message")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    actor_id: str
    task_display_name: str
    kind: str
    message: str
    def __init__(self, graph_id: _Optional[str] = ..., actor_id: _Optional[str] = ..., task_display_name: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ActorStatus(_message.Message):
    __slots__ = ("graph_id", "actor_id", "state", "executions_done", "error", "pid", "pid_start_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ActorStatus.State]
        READY: _ClassVar[ActorStatus.State]
        RUNNING: _ClassVar[ActorStatus.State]
        STOPPED: _ClassVar[ActorStatus.State]
        FAILED: _ClassVar[ActorStatus.State]
    STATE_UNSPECIFIED: ActorStatus.State
    READY: ActorStatus.State
    RUNNING: ActorStatus.State
    STOPPED: ActorStatus.State
    FAILED: ActorStatus.State
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_TIME_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    actor_id: str
    state: ActorStatus.State
    executions_done: int
    error: ErrorReport
    pid: int
    pid_start_time: int
    def __init__(self, graph_id: _Optional[str] = ..., actor_id: _Optional[str] = ..., state: _Optional[_Union[ActorStatus.State, str]] = ..., executions_done: _Optional[int] = ..., error: _Optional[_Union[ErrorReport, _Mapping]] = ..., pid: _Optional[int] = ..., pid_start_time: _Optional[int] = ...) -> None: ...
