"""The façade: what raycg/__init__.py re-exports (../shared/API.md)."""
