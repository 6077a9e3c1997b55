"""raycg: a compiled-graph engine for Ray.

Build a DAG of actor method calls with Ray's own API, compile it once, run it many times
with microseconds of overhead::

    graph = raycg.compile(dag)
    ray.get(graph.execute(x))
    graph.teardown()

The public API is exactly docs/api.md (in the repository); everything else lives in ``_``-prefixed
modules or in the packages below (transports, compiler, runtime, proto).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["compile", "patch_ray", "unpatch_ray"]

if TYPE_CHECKING:
    from ._api import compile, patch_ray, unpatch_ray


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a package below the façade (raycg.transports on a machine
    # without Ray, or raycg.runtime inside an actor) does not import the whole engine.
    if name in __all__:
        from . import _api

        return getattr(_api, name)
    if name == "collective":  # a module (API.md), imported on first use like the rest
        return __import__(f"{__name__}.collective", fromlist=["_"])
    raise AttributeError(f"module 'raycg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
