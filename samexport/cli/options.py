"""Option parsing shared by the commands: prompt points and boxes, and the TensorRT engine options
that ``build`` and ``engines`` both take."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated

import typer

from samexport.engines.builder import BuildConfig
from samexport.errors import SamExportError


def parse_numbers(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    """``text`` as comma-separated numbers, as many as one of ``counts``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        shape = " or ".join({2: "X,Y", 3: "X,Y,LABEL", 4: "X1,Y1,X2,Y2"}[c] for c in counts)
        raise SamExportError(f"{option} expects {shape}; got {text!r}")
    return values


def parse_point(text: str) -> list[float]:
    """``X,Y`` or ``X,Y,LABEL`` with LABEL 1 (foreground) or 0 (background): the labels a person
    clicks (padding and box-corner labels come from ``--box``, not from points)."""
    values = parse_numbers(text, "--point", (2, 3))
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise SamExportError(f"--point LABEL must be 1 (foreground) or 0 (background); got {text!r}")
    return values


def _option(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


ENGINE_OPTIONS = (
    _option("max_points", Annotated[int, typer.Option(help="Largest points per prompt the decoder engine accepts (a box is 2).", min=1)], 16),
    _option("max_batch", Annotated[int, typer.Option(help="Largest prompt batch the decoder engine accepts.", min=1)], 64),
    _option("workspace_gb", Annotated[float, typer.Option(help="TensorRT workspace limit in GiB.", min=0.1)], 4.0),
    _option(
        "timing_cache",
        Annotated[Path | None, typer.Option(help="TensorRT timing cache file, read and updated (speeds up rebuilds).")],
        None,
    ),
    _option(
        "hardware_compatible",
        Annotated[bool, typer.Option(help="Engines that run on any Ampere or newer discrete GPU (slower; not on Jetson, not with --attention plugin).")],
        False,
    ),
    _option(
        "version_compatible",
        Annotated[bool, typer.Option(help="Engines that later TensorRT releases can run (same major version, and 10.x plans on 11.x).")],
        False,
    ),
)
"""The TensorRT engine options of ``build`` and ``engines``, declared once (see :func:`engine_options`)."""


def engine_config(max_points: int, max_batch: int, workspace_gb: float, timing_cache: Path | None,
                  hardware_compatible: bool, version_compatible: bool):
    """The engine options as the builder's :class:`~samexport.engines.builder.BuildConfig`."""

    return BuildConfig(
        workspace_bytes=int(workspace_gb * (1 << 30)),
        prompts=(1, 1, max_batch),
        points=(1, min(2, max_points), max_points),
        timing_cache=timing_cache,
        version_compatible=version_compatible,
        hardware_compatibility="ampere_plus" if hardware_compatible else "none",
    )


def engine_options(command):
    """Give ``command`` the options of :data:`ENGINE_OPTIONS` after its own; it receives them as
    one ``engine_config`` keyword (a ``BuildConfig``) instead.

    typer reads a command's options from its signature, so the wrapper declares the combined
    signature (``__signature__``, with annotations evaluated: typer cannot evaluate this
    module's names in the command's module).
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "engine_config"]
    names = [p.name for p in ENGINE_OPTIONS]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        chosen = {name: kwargs.pop(name) for name in names}
        return command(*args, engine_config=engine_config(**chosen), **kwargs)

    parameters = [*own, *ENGINE_OPTIONS]
    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
