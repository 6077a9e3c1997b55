"""Pictures of a Plan: actors, their tasks in schedule order, and the channels between them.

Pure functions of a ``raycg.proto.Plan``: no Ray, no actors, and no Graphviz except to
render an image. Both drawings (``_dot``, ``_ascii``) read the plan the same way
(``_layout``): a channel goes from the task that writes it (or the driver's input) to
every task that reads it and to the driver's outputs that read it. Each edge says its
transport and, where the value carries tensors, what they do
(``_describe``); a plan on several Ray nodes groups its actors by node; a collective is
one more node, joined to its members' tasks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import webbrowser
from pathlib import Path

from raycg.proto import Plan

from ._ascii import to_ascii
from ._dot import to_dot

__all__ = ["IMAGE_FORMATS", "TEXT_FORMATS", "to_ascii", "to_dot", "visualize"]

TEXT_FORMATS = ("ascii", "dot")
# What Graphviz renders that a viewer opens; Ray passes any of graphviz.FORMATS through.
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "gif")


def visualize(
    plan: Plan,
    filename: str | os.PathLike[str] = "compiled_graph",
    format: str = "png",
    view: bool = False,
    channel_details: bool = False,
) -> str:
    """Draw ``plan`` as Ray's ``CompiledDAG.visualize`` does, and return the drawing.

    ``format="ascii"`` writes nothing and returns the text drawing (printed too with
    ``view``). Any other format returns the DOT source, saved to ``filename``, with the
    rendered drawing in ``filename + "." + format``: ``"dot"`` is the source itself (no
    Graphviz needed), an image format is rendered by Graphviz's ``dot`` binary, and
    ``view`` opens it in the system's viewer. These are Ray's files and return values.

    Args:
        plan: the compiled graph's Plan.
        filename: the path to write, without the extension (ignored for "ascii").
        format: "ascii", "dot", or an image format: "png", "svg", "pdf", "jpg", "gif".
        view: for "ascii", print the drawing; else open the written file.
        channel_details: add each channel's id, what flows in it and its readers to the
            edge labels (not with "ascii", as in Ray).

    Raises:
        ValueError: ``format`` is not one of the above, or ``channel_details`` with "ascii".
        RuntimeError: an image format was asked for and ``dot`` is missing or failed.
    """
    if format not in TEXT_FORMATS + IMAGE_FORMATS:
        allowed = ", ".join(repr(f) for f in TEXT_FORMATS + IMAGE_FORMATS)
        raise ValueError(f"visualize: unknown format {format!r}; use one of {allowed}")
    if format == "ascii":
        if channel_details:
            raise ValueError(
                "Parameters 'channel_details' are not compatible with 'ascii' format. "
                "visualize: the ascii drawing already names each channel's transport; use "
                "format='dot' or an image format for channel details"
            )
        text = to_ascii(plan)
        if view:
            print(text, end="")
        return text
    source = to_dot(plan, channel_details=channel_details)
    path = f"{os.fspath(filename)}.{format}"
    if format == "dot":
        Path(path).write_text(source, encoding="utf-8")
    else:
        _render(source, format, path)
    # The source beside the drawing, as graphviz's render() (which Ray calls) leaves it.
    Path(filename).write_text(source, encoding="utf-8")
    if view:
        webbrowser.open(Path(path).resolve().as_uri())
    return source


def _render(source: str, format: str, path: str) -> None:
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(
            f"visualize: format={format!r} needs Graphviz's `dot` binary, which is not on PATH; "
            "install Graphviz (e.g. `apt-get install graphviz`), or use format='dot' or format='ascii'"
        )
    done = subprocess.run([dot, f"-T{format}", "-o", path], input=source.encode(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"visualize: `dot -T{format}` failed: {done.stderr.decode(errors='replace')}")
