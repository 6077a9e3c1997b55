"""raycg-transports on its own: only the C extension lives here (native_build.py defines
it, for this build and the root one); everything else is in pyproject.toml.

raycg.transports._native is the shared-memory ring's hot path (see its source for why it
is C). Installing needs a C compiler and Python's headers.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # native_build.py, beside us
from native_build import native_extension

setup(ext_modules=[native_extension(".")])
