"""raycg: a compiled-graph engine for Ray.

The public API is exactly ../shared/API.md; everything else lives in ``_``-prefixed
modules or in the packages below (transports, compiler, runtime, proto).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
