"""The project's error types for user mistakes, and the one place that turns them into one line.

Every entry point (train.py, test.py, pretrain.py, infer.py, the preprocess scripts, ``python -m
models.pretrained``) runs its ``main`` through ``exit_on_user_error``: an error of a type below (``UserError`` and its
subclasses) becomes ``error: <message>`` on stderr (first process of a torchrun launch only) and exit status 2; any
other exception is an internal error and keeps its traceback. A message names the file, record or key at fault
and, where there is one, what to do about it.

This module imports nothing of the project (``utils/`` is a leaf package).
"""
import os
import sys


class UserError(Exception):
    """Base class: something the user gave (a file, a record, a config value, a flag) cannot be used."""


class MissingDataError(UserError, FileNotFoundError):
    """A file or folder a command needs is not there; the message names it and the command that makes it."""


class BadInputError(UserError, ValueError):
    """An input a command was given exists but cannot be used; the message says which and why."""


class ConfigError(UserError, ValueError):
    """A config file or ``--opts`` value is invalid: unknown key, wrong type, value out of range."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is refused (empty, truncated, not a checkpoint, pickled code, trained with another config)."""


class DiskFullError(UserError, OSError):
    """A save ran out of disk space; the message says that the previous file is intact."""


def exit_on_user_error(main, *args):
    """``main(*args)``; a ``UserError`` becomes one ``error: ...`` line on stderr and exit status 2."""
    try:
        return main(*args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
