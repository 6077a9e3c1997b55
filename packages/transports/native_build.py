"""The C extension ``raycg.transports._native``, defined once for the two builds.

raycg builds one way, with setuptools, from two entry points that share this definition:

- the root distribution (``pip install -e .``, ``./dev setup``, and in a worktree
  ``python setup.py build_ext --inplace``): its ``setup.py`` calls
  :func:`native_extension` with ``"packages/transports"``. Its Python packages come from
  ``src/raycg``, where ``transports``, ``compiler``, ``runtime`` and ``proto`` are
  symlinks to ``packages/*/src/raycg/*`` and ``proto/src/raycg/proto``: one source
  tree, which an in-place build fills (the extension lands beside the ring's Python
  code, reached through the symlink), and which ``PYTHONPATH=src`` imports as is.
- raycg-transports alone (``pip install packages/transports``: tox's ``test-transports``,
  a GPU box without Ray): ``packages/transports/setup.py`` calls it with ``"."``.

Paths stay relative to the calling ``setup.py``, as setuptools requires.
"""

from __future__ import annotations

from setuptools import Extension

SOURCES = ("_native", "_native_writer", "_native_reader")


def native_extension(package_root: str) -> Extension:
    """The extension, for a ``setup.py`` in which ``package_root`` is raycg-transports'
    folder (the one holding ``src/raycg/transports``)."""
    where = f"{package_root.rstrip('/')}/src/raycg/transports"
    return Extension(
        "raycg.transports._native",
        sources=[f"{where}/{name}.c" for name in SOURCES],
        depends=[f"{where}/_native.h"],
        extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-fvisibility=hidden"],
    )
