"""Print raycg's requirements, one a line: pyproject.toml's core dependencies and those
of the extras named (comma-separated; an extra that is not declared is skipped, so a
build keeps working when an extra is folded into the core dependencies).

    python3 deploy/requirements.py torch [pyproject.toml]
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def requirements(extras: list[str], pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(dep for extra in extras for dep in optional.get(extra, []))]


if __name__ == "__main__":
    names = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e]
    default = Path(__file__).resolve().parent.parent / "pyproject.toml"
    path = Path(sys.argv[2]) if len(sys.argv) > 2 else default
    print("\n".join(requirements(names, path)))
