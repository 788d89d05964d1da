"""The error boundary every command line of vlm_jax shares.

A command's `main(argv)` returns `cli.run(_main, argv, prog=...)`. Inside, code raises `UsageError` (exit 2:
the command line is wrong) or `InputError` (exit 1: a file, record or field is bad) with ONE line that names
the file / record / field and says what would fix it. `run` prints `error: <that line>` to stderr and returns
the exit code; the traceback is shown only with `--debug` anywhere on the command line or `VLM_JAX_DEBUG=1`.
Missing/unreadable files (OSError) become exit 1 with the path; anything else is reported on one line as an
internal error (a bug: rerun with --debug and report it).

`ArgumentParser` is argparse's with errors raised as `UsageError` (one line, exit 2) instead of the usage
block; `closest(name, choices)` gives the "did you mean" hint for unknown keys.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from typing import Callable, Iterable, Sequence

DEBUG_ENV = "VLM_JAX_DEBUG"
DEBUG_FLAG = "--debug"


class UserError(ValueError):
    """A problem the user can fix. `str(e)` is one line naming the file/record/field and the fix. A ValueError, so
    library callers that catch ValueError keep working."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(UserError):
    """The command line itself is wrong (missing/unknown flag, bad value): exit 2."""

    exit_code = 2


class InputError(UserError):
    """An input named on the command line is missing, of the wrong kind or malformed: exit 1."""

    exit_code = 1


def one_line(message: object) -> str:
    """`message` as a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(message).split())


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to `name` (difflib), or None when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" (or "") for an unknown `name`."""
    match = closest(name, choices)
    return f"; did you mean {match!r}?" if match else ""


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or (argv is not None and DEBUG_FLAG in argv)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *, prog: str) -> int:
    """Calls `main(argv)` (argv without the program name; default sys.argv[1:], `--debug` removed) and turns
    every failure into `error: ...` on one stderr line and an exit code. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
        return 0 if code is None else int(code)
    except UserError as e:
        return _report(one_line(e), e.exit_code, debug)
    except KeyboardInterrupt:
        return _report("interrupted", 130, debug)
    except MemoryError:
        return _report(f"{prog} ran out of memory", 1, debug)
    except OSError as e:
        return _report(_os_error(e), 1, debug)
    except SystemExit:
        raise
    except Exception as e:  # a bug: still one line, the traceback on request
        hint = "" if debug else f" (rerun with {DEBUG_FLAG} for the traceback and please report it)"
        return _report(f"internal error in {prog}: {type(e).__name__}: {one_line(e)}{hint}", 1, debug)


def _os_error(e: OSError) -> str:
    what = {FileNotFoundError: "no such file or folder", IsADirectoryError: "is a folder, expected a file",
            NotADirectoryError: "is not a folder", PermissionError: "permission denied"}.get(type(e))
    if e.filename is not None and what:
        return f"{e.filename}: {what}"
    if e.filename is not None:
        return f"{e.filename}: {one_line(e.strerror or e)}"
    return one_line(e)


def _report(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `error()` raises `UsageError` ("PROG: MESSAGE (see PROG --help)")."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise UsageError(f"{one_line(message)} (see {self.prog} --help)")


def require_file(path, what: str, fix: str = "") -> str:
    """`path` if it is an existing regular file, else `InputError` naming `what` and the fix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} {path}: no such file{'; ' + fix if fix else ''}")
    if not os.path.isfile(path):
        kind = "a folder" if os.path.isdir(path) else "not a regular file"
        raise InputError(f"{what} {path}: is {kind}, expected a file{'; ' + fix if fix else ''}")
    return path


def require_dir(path, what: str, fix: str = "") -> str:
    """`path` if it is an existing folder, else `InputError` naming `what` and the fix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} {path}: no such folder{'; ' + fix if fix else ''}")
    if not os.path.isdir(path):
        raise InputError(f"{what} {path}: is a file, expected a folder{'; ' + fix if fix else ''}")
    return path
