"""Only the C extension lives here; everything else is in pyproject.toml.

raycg.transports._native is the shared-memory ring's hot path (see its source for
why it is C). Installing needs a C compiler and Python's headers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "raycg.transports._native",
            sources=[
                f"src/raycg/transports/{name}.c" for name in ("_native", "_native_writer", "_native_reader")
            ],
            depends=["src/raycg/transports/_native.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-fvisibility=hidden"],
        )
    ]
)
