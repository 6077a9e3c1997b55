"""raycg.transports: channels that move values between processes.

Never imports Ray. Every transport implements :class:`Channel`; errors are this
package's own (see ``_errors``) and the runtime maps them to Ray's.
"""

from typing import TYPE_CHECKING

try:
    from . import _native  # noqa: F401  (first, for the error below)
except ImportError as e:  # pragma: no cover - depends on how raycg was installed
    raise ImportError(
        "raycg.transports._native, the shared-memory ring's C core, is not built or does not "
        f"load ({e}). Install raycg with pip (`pip install -e .` in a clone, or `./dev setup`), "
        "which compiles it: that needs a C compiler and Python's headers."
    ) from e

from ._address import join_host_port
from ._channel import Channel
from ._communicator import Communicator, ForeignCommunicator, ReduceOp, as_communicator
from ._cpu_comm import CpuCommGroup, CpuCommSpec, CpuCommunicator
from ._deadline import deadline_after, remaining
from ._errors import (
    ChannelBroken,
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    SlotPinned,
    ValueNotSerializable,
)
from ._inproc import InprocReader, InprocRing, InprocWriter
from ._liveness import is_alive as is_process_alive
from ._liveness import process_start_time
from ._nccl import NcclCommunicator, nccl_unique_id
from ._shm_reader import ShmRingReader
from ._shm_ring import ShmRing, ShmRingSpec
from ._shm_writer import ShmRingWriter
from ._tensor_channel import Pending, TensorReader, TensorWriter

if TYPE_CHECKING:
    from ._cpu_comm_net import CpuNetCommunicator
    from ._cpu_comm_net_node import CpuNetNode, CpuNetSpec, NetNodeSpec, join_specs
    from ._grpc_server import GrpcServer
    from ._grpc_stream import GrpcTarget
    from ._grpc_writer import GrpcChannelSpec, GrpcWriter

# The cross-node channel's names (and the cross-node communicator's) load grpcio
# (~90 ms) on first use only: most processes of a graph never send across nodes.
_LAZY = {
    "CpuNetCommunicator": "._cpu_comm_net",
    "CpuNetNode": "._cpu_comm_net_node",
    "CpuNetSpec": "._cpu_comm_net_node",
    "NetNodeSpec": "._cpu_comm_net_node",
    "join_specs": "._cpu_comm_net_node",
    "GrpcServer": "._grpc_server",
    "GrpcTarget": "._grpc_stream",
    "GrpcChannelSpec": "._grpc_writer",
    "GrpcWriter": "._grpc_writer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Channel",
    "Communicator",
    "CpuCommGroup",
    "CpuCommSpec",
    "CpuCommunicator",
    "CpuNetCommunicator",
    "CpuNetNode",
    "CpuNetSpec",
    "ForeignCommunicator",
    "NcclCommunicator",
    "ReduceOp",
    "as_communicator",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "GrpcChannelSpec",
    "GrpcServer",
    "GrpcTarget",
    "GrpcWriter",
    "InprocReader",
    "InprocRing",
    "InprocWriter",
    "ShmRing",
    "ShmRingReader",
    "ShmRingSpec",
    "ShmRingWriter",
    "NetNodeSpec",
    "SlotPinned",
    "Pending",
    "TensorReader",
    "TensorWriter",
    "ValueNotSerializable",
    "deadline_after",
    "is_process_alive",
    "join_host_port",
    "join_specs",
    "nccl_unique_id",
    "open_reader",
    "open_writer",
    "process_start_time",
    "remaining",
]


def open_writer(spec: ShmRingSpec, **kwargs: object) -> ShmRingWriter:
    """Open the write end of the channel ``spec`` describes."""
    return ShmRingWriter(spec, **kwargs)  # type: ignore[arg-type]


def open_reader(spec: ShmRingSpec, index: int, **kwargs: object) -> ShmRingReader:
    """Open read end ``index`` of the channel ``spec`` describes."""
    return ShmRingReader(spec, index, **kwargs)  # type: ignore[arg-type]


def _install_faults() -> None:
    # Fault injection for chaos runs: a no-op unless RAYCG_FAULTS is set (see _faults).
    import os

    if os.environ.get("RAYCG_FAULTS"):
        from ._faults import install_from_env

        install_from_env()


_install_faults()
