"""Projections: how a value read from a channel becomes the part a reader wants.

Shared by both sides: the executor projects its inputs (``inp[0]``, ``inp.key``, a
task's ``num_returns`` outputs), and the caller projects what it reads from the output
rings. Neither side imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raycg.proto import Projection

# One Projection, read out of its protobuf message once at setup: (kind, index, key).
Step = tuple[str, int, str]

#: ``inp`` bound alone: the first positional argument of ``execute``.
FIRST_ARG: tuple[Step, ...] = (("first_arg", 0, ""),)


def compile_projections(projections: Sequence[Projection]) -> tuple[Step, ...]:
    """The steps of ``projections``, read out of their messages (once, not per value)."""
    return tuple((p.WhichOneof("kind"), p.index, p.key) for p in projections)


def project(value: Any, steps: Sequence[Step], from_input: bool) -> Any:
    """Apply ``steps`` to ``value``; ``from_input``: ``value`` is the caller's
    ``(args, kwargs)``, which the first step indexes.

    Raises:
        IndexError, KeyError, TypeError: ``value`` has no such part.
    """
    for kind, index, key in steps:
        if from_input:  # the caller wrote (args, kwargs)
            args, kwargs = value
            value = args[0] if kind == "first_arg" else args[index] if kind == "index" else kwargs[key]
            from_input = False
        else:
            value = value[index] if kind == "index" else value[key]
    return value
