"""A user's mistakes and how the command lines report them: one message, a non-zero exit, no traceback.

A mistake the user can fix — a missing or malformed file, a bad option, config override or value, missing data
or credentials — is printed as ``error: <message>`` on stderr and the command exits with status 1. ``--debug``
(or ``HYDRA_FULL_ERROR=1``, Hydra's own switch) shows the traceback instead. Any other exception is a bug and
keeps its traceback.

What counts as a mistake (:func:`is_user_error`): :class:`UserError` and its subclasses (the package's own
exceptions for bad checkpoints, missing weights, credentials, downloads), ``ValueError`` (a bad value),
``OSError`` (a missing or unreadable file), and Hydra's and OmegaConf's errors (bad overrides, unknown config
options, misspelt keys, a ``_target_`` that fails).

- :func:`run_cli` runs the ``main(argv)`` of an argparse entry point (``npair.evaluate``, ``npair.tables``,
  ``npair.plots``, ``npair.data.download``); :func:`add_debug_option` gives its parser ``--debug``.
- :func:`hydra_cli` and :func:`raise_for_hydra` do the same for the Hydra entry point (``npair.train``): Hydra
  prints a ``CompactHydraException`` as its message alone, in single runs and sweeps.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from hydra.errors import CompactHydraException, HydraException, InstantiationException
from omegaconf.errors import OmegaConfBaseException

DEBUG_FLAG = "--debug"
DEBUG_ENV = "HYDRA_FULL_ERROR"  # Hydra's switch for full tracebacks; --debug sets it for child processes too
HINT = f"(run with {DEBUG_FLAG}, or {DEBUG_ENV}=1, to see the traceback)"
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class UserError(Exception):
    """A mistake the user can fix; the message names the file, key or value and says what to do.

    Library exceptions that are user mistakes subclass it (keeping their old base class, e.g.
    ``class CheckpointError(UserError, RuntimeError)``), so every entry point reports them the same way.
    """


class ReportedError(CompactHydraException):
    """A user's mistake inside the training task, re-raised for Hydra, which prints the message of a
    ``CompactHydraException`` alone (no traceback) and exits with status 1."""


def is_user_error(err: BaseException) -> bool:
    """True for the exceptions a user's mistake raises (module docstring); False for bugs and for exits."""
    return isinstance(err, (UserError, ValueError, OSError, HydraException, OmegaConfBaseException))


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """``--debug`` among the arguments, or ``HYDRA_FULL_ERROR=1`` in the environment."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV) == "1"


def describe(err: BaseException) -> str:
    """The message of a user's mistake, as printed.

    Hydra's ``InstantiationException`` writes its cause with ``repr()``, which turns a multi-line message
    (e.g. the steps to fetch missing pretrained weights) into one line of literal ``\\n``: the cause's own
    message is used instead, followed by the target that failed.
    """
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        text = str(err)
        target = re.match(r"Error in call to target '([^']+)'", text)
        full_key = re.search(r"^full_key: (.+)$", text, re.MULTILINE)
        where = ", ".join(
            part
            for part in (
                f"building {target.group(1)}" if target else "",
                f"config key {full_key.group(1)}" if full_key else "",
            )
            if part
        )
        cause = describe(err.__cause__)
        return f"{cause}\n  ({where})" if where else cause
    if isinstance(err, KeyError) and err.args:  # str(KeyError) quotes its message
        return str(err.args[0])
    text = str(err).strip()
    if isinstance(err, HydraException) and isinstance(err.__cause__, OmegaConfBaseException):
        text = f"{text}\n{str(err.__cause__).strip()}"  # as Hydra prints it
    return text or type(err).__name__


def report(err: BaseException) -> None:
    """Print a user's mistake as ``error: <message>`` and the hint line, on stderr."""
    print(f"error: {describe(err)}\n{HINT}", file=sys.stderr, flush=True)


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """The ``--debug`` flag of every argparse entry point (read by :func:`run_cli` before parsing)."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show an error's traceback, not its message alone (as {DEBUG_ENV}=1 does)",
    )


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's ``main(argv)`` and return its exit status, reporting a user's mistake as one
    message with status 1 (:func:`report`). With ``--debug`` or ``HYDRA_FULL_ERROR=1`` the exception
    propagates with its traceback; bugs always do. Ctrl-C ends with status 130 and one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # SystemExit (argparse, explicit exits) passes through untouched
        if debug_requested(args) or not is_user_error(err):
            raise
        report(err)
        return EXIT_USER_ERROR
    return code if isinstance(code, int) else 0


def hydra_cli(task: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` task from the command line, accepting ``--debug`` as ``HYDRA_FULL_ERROR=1``
    (Hydra's own parser does not know the flag)."""
    if DEBUG_FLAG in sys.argv[1:]:
        sys.argv = [arg for arg in sys.argv if arg != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"
    return task()


def raise_for_hydra(err: Exception) -> NoReturn:
    """Re-raise ``err`` from a Hydra task so that Hydra reports it well: a user's mistake as a
    :class:`ReportedError` (its message alone, status 1), unless ``--debug`` / ``HYDRA_FULL_ERROR=1`` asks for
    the traceback; anything else as it is. Call it in an ``except`` block around the task's work."""
    if isinstance(err, ReportedError) or not is_user_error(err) or debug_requested():
        raise err
    # Hydra adds its own line about HYDRA_FULL_ERROR; no cause, or Hydra would print an OmegaConf one again
    raise ReportedError(f"error: {describe(err)}") from None
