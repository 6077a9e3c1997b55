"""``raycg.patch_ray()``: route Ray's ``experimental_compile`` to raycg."""

from __future__ import annotations

from typing import Any

from ray.dag import DAGNode

from ._compile import compile
from ._options import RAY_SPELLINGS

_original: Any = None


def _experimental_compile(self: DAGNode, **ray_options: Any) -> Any:
    unknown = set(ray_options) - set(RAY_SPELLINGS)
    if unknown:
        raise TypeError(f"experimental_compile() got unexpected option(s) {sorted(unknown)}")
    options = {RAY_SPELLINGS[k]: v for k, v in ray_options.items()}
    if options.get("default_communicator") == "create":
        options.pop("default_communicator")
    return compile(self, **options)


def patch_ray() -> None:
    """Make ``dag.experimental_compile(...)`` compile with raycg, accepting Ray's spelling
    of every option. Idempotent; :func:`unpatch_ray` undoes it."""
    global _original
    if _original is None:
        _original = DAGNode.experimental_compile
        DAGNode.experimental_compile = _experimental_compile  # type: ignore[method-assign,assignment]


def unpatch_ray() -> None:
    """Restore Ray's own ``experimental_compile``. Idempotent."""
    global _original
    if _original is not None:
        DAGNode.experimental_compile = _original  # type: ignore[method-assign]
        _original = None
