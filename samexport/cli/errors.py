"""The command line's error boundary: a user's mistake is one line and exit 1, a bug in samexport
is a traceback, a request to report it and exit 70."""

from __future__ import annotations

import errno
import functools
import traceback
import warnings

import typer

from samexport.errors import SamExportError

EX_SOFTWARE = 70
"""Exit status for a bug in samexport (``sysexits.h``); a user's mistake exits with 1."""

# Operating-system errors about the user's own files and disks: one line, like SamExportError.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # disk full, quota, read-only


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one line, exit 1) rather than a bug (a traceback)."""
    if isinstance(exc, (SamExportError, *USER_OS_ERRORS)):
        return True
    return isinstance(exc, OSError) and exc.errno in USER_ERRNOS


def clean_errors(command):
    """Run a command: a user error (:class:`SamExportError`, a missing or unwritable file, a full
    disk) is printed as one line with exit status 1; any other exception is a bug in samexport,
    printed with its traceback and a request to report it, exit status 70."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # samexport refuses images over its own limit with a clear line; Pillow's warning about
        # the same image would only repeat it.
        warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors (Exit and Abort are RuntimeErrors)
        except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs right here
            if is_user_error(exc):
                typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
                raise typer.Exit(1) from None
            traceback.print_exc()
            typer.secho(
                f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in samexport: please report it "
                "with the command you ran and the traceback above.",
                err=True, fg=typer.colors.RED,
            )
            raise typer.Exit(EX_SOFTWARE) from None

    return wrapper
