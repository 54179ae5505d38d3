"""The exceptions samexport raises for problems a user can fix: :class:`SamExportError` and its
subclasses. Anything else escaping samexport is a bug (the CLI prints its traceback).
Also the helpers that turn a missing optional package into one (:func:`require`,
:func:`require_torch`)."""

from __future__ import annotations

import importlib
import sys


class SamExportError(Exception):
    """A user-facing error: bad input, missing file, missing extra, incompatible artifact.

    The CLI prints its message as one line and exits with status 1; library callers can catch it.
    """


class InvalidInputError(SamExportError, ValueError):
    """An argument or input value is malformed or out of range (an image, prompt or option).

    Also a :class:`ValueError`, so callers that catch that (as with NumPy) keep working.
    """


class NoImageSetError(SamExportError, RuntimeError):
    """A predictor was asked to predict before ``set_image`` (a ``RuntimeError``, as upstream)."""


class MissingExtraError(SamExportError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str):
    """Import ``module`` or raise a :class:`MissingExtraError` naming the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'samexport[{extra}]'"
        ) from exc


# -- torch, optional everywhere ---------------------------------------------------------------


def require_torch(what: str, *, numpy_name: str | None = None):
    """``torch``, or a :class:`MissingExtraError` saying that ``what`` needs it (and which NumPy
    method or attribute does the same without it)."""
    try:
        import torch
    except ImportError as exc:
        instead = f", or use {numpy_name} for NumPy" if numpy_name else ""
        raise MissingExtraError(
            f"{what} works with torch tensors, like segment_anything's, but torch is not installed; "
            f"install it with: pip install 'samexport[torch]'{instead}"
        ) from exc
    return torch


def is_torch_module(value: object) -> bool:
    """Whether ``value`` is a ``torch.nn.Module`` (without importing torch if nobody has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def torch_model_error(value: object, where: str) -> SamExportError:
    """The error for a torch model passed where samexport needs an artifact."""
    return SamExportError(
        f"{where} got a torch {type(value).__name__} model; samexport runs exported graphs, not torch "
        "modules. Build an artifact from the checkpoint once (samexport build --variant vit_b "
        "--checkpoint sam_vit_b_01ec64.pth --output engines/vit_b-fp32) and pass its directory, "
        "e.g. samexport.sam_model_registry['vit_b'](checkpoint='engines/vit_b-fp32')"
    )


class PromptWarning(UserWarning):
    """A prompt samexport runs as given, as ``segment_anything`` does, though it is likely a
    mistake (a box with its corners swapped, a point outside the image). Shown once per place in
    the calling code (Python's default warning filter); ``warnings.simplefilter("error",
    PromptWarning)`` turns it into an error."""
