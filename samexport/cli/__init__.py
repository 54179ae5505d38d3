"""The ``samexport`` command line: thin wrappers over the library, one clear line per error.

Each command lives in the module of its job (:mod:`~samexport.cli.artifacts`,
:mod:`~samexport.cli.segment`, :mod:`~samexport.cli.checks`, :mod:`~samexport.cli.serve`) and imports
the library's modules at its top; those import torch, ONNX Runtime, TensorRT and FastAPI only when
a command uses them, so ``--help`` and ``import samexport.cli`` stay light. The commands are registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

import typer

from samexport.cli.artifacts import build, engines, export_official_decoder, info
from samexport.cli.checks import bench, doctor, parity, references, verify
from samexport.cli.errors import EX_SOFTWARE, clean_errors, is_user_error
from samexport.cli.segment import embed, predict, segment_all
from samexport.cli.serve import serve

__all__ = ["EX_SOFTWARE", "app", "clean_errors", "is_user_error"]

app = typer.Typer(
    help="Segment Anything (SAM) from PyTorch weights to verified ONNX / TensorRT deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for command in (build, predict, engines, info, doctor, bench, parity, verify, references):
    app.command()(command)
app.command("segment-all")(segment_all)
app.command()(embed)
app.command("export-official-decoder")(export_official_decoder)
app.command()(serve)
