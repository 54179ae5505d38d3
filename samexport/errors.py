"""The exceptions samexport raises for problems a user can fix: :class:`SamExportError` and its
subclasses. Anything else escaping samexport is a bug (the CLI prints its traceback)."""


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
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed; install it with: pip install 'samexport[{extra}]'"
        ) from exc


class PromptWarning(UserWarning):
    """A prompt samexport runs as given, as ``segment_anything`` does, though it is likely a
    mistake (a box with its corners swapped, a point outside the image). Shown once per place in
    the calling code (Python's default warning filter); ``warnings.simplefilter("error",
    PromptWarning)`` turns it into an error."""
