"""The one exception type samexport raises for problems a user can fix."""


class SamExportError(Exception):
    """A user-facing error: bad input, missing file, missing extra, incompatible artifact.

    The CLI prints its message as one line and exits with status 1; library callers can catch it.
    """


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
