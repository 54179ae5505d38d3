"""The command line's error boundary: a user's mistake is one line and exit 1, a bug in samexport
is a traceback, a request to report it and exit 70."""

from __future__ import annotations

import errno
import functools
import re
import traceback
import warnings

import typer

from samexport.errors import SamExportError

EX_SOFTWARE = 70
"""Exit status for a bug in samexport (``sysexits.h``); a user's mistake exits with 1."""

# Operating-system errors about the user's own files and disks: one line, like SamExportError.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# Full disks and file systems, said in words a user can act on (the OSError says only "File too
# large" or "No space left on device", often without the file's name).
USER_ERRNOS = {
    errno.ENOSPC: "the disk is full: free some space, or write to another disk",
    errno.EDQUOT: "your disk quota is used up: free some space, or write to another disk",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EFBIG: (
        "a file grew past the largest size this file system (FAT32: 4 GB) or `ulimit -f` allows: "
        "write to another file system, or raise the limit"
    ),
}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)  # pyarrow's OSErrors carry it in the text only


def _user_errno(exc: BaseException) -> int | None:
    """The :data:`USER_ERRNOS` number of ``exc`` or of an exception it was raised from (a library
    re-raising a write error as its own), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            number = exc.errno
            if number is None:
                found = _ERRNO_IN_TEXT.search(str(exc))
                number = int(found.group(1)) if found else None
            if number in USER_ERRNOS:
                return number
        exc = exc.__cause__
    return None


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (one line, exit 1) rather than a bug (a traceback)."""
    if isinstance(exc, (SamExportError, *USER_OS_ERRORS)):
        return True
    return _user_errno(exc) is not None


def user_message(exc: BaseException) -> str:
    """The one line printed for a user error: its message, and for a full or read-only disk or
    a file over the size limit, what to do."""
    number = _user_errno(exc)
    return f"{exc} ({USER_ERRNOS[number]})" if number is not None and not isinstance(exc, SamExportError) else str(exc)


def clean_errors(command):
    """Run a command: a user error (:class:`SamExportError`, a missing or unwritable file, a full
    disk, a file over the file system's size limit) is printed as one line with exit status 1; any other exception is a bug in samexport,
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
                typer.secho(f"error: {user_message(exc)}", err=True, fg=typer.colors.RED)
                raise typer.Exit(1) from None
            traceback.print_exc()
            typer.secho(
                f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in samexport: please report it "
                "with the command you ran and the traceback above.",
                err=True, fg=typer.colors.RED,
            )
            raise typer.Exit(EX_SOFTWARE) from None

    return wrapper
