"""The façade: what raycg/__init__.py re-exports (docs/api.md)."""

from ._compile import compile
from ._patch import patch_ray, unpatch_ray

__all__ = ["compile", "patch_ray", "unpatch_ray"]
