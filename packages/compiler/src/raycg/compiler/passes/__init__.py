"""The compiler's passes: plain functions on an ``ir.Graph``, one per module."""

from .assign_communicators import assign_communicators
from .assign_tensor_transports import assign_tensor_transports
from .assign_transports import assign_transports
from .overlap import overlap
from .schedule import schedule
from .size_buffers import size_buffers
from .validate import validate

__all__ = [
    "assign_communicators",
    "assign_tensor_transports",
    "assign_transports",
    "overlap",
    "schedule",
    "size_buffers",
    "validate",
]
