"""The root distribution's C extension; everything else is in pyproject.toml.

The extension is raycg-transports' own, defined once in packages/transports/native_build.py
(which also says how the two builds relate, and why src/raycg holds symlinks). Installing
needs a C compiler and Python's headers. In a worktree: ``python setup.py build_ext --inplace``.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "packages", "transports"))
from native_build import native_extension

setup(ext_modules=[native_extension("packages/transports")])
