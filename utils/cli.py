"""Command-line parsing for the entry points: a bad flag is a user error like any other, one line and exit status 2.

``ArgumentParser`` is argparse's parser whose ``error`` raises ``BadInputError`` (``error: <prog>: <what> (see
<prog> --help)`` once ``utils.errors.exit_on_user_error`` prints it) instead of printing the usage and exiting,
so an entry point parses its flags inside ``exit_on_user_error`` and a test can catch the error in-process.
``positive_int``, ``non_negative_int`` and ``fraction`` are ``type=`` functions for flags with a range.
"""
import argparse

from utils.errors import BadInputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser; a usage error raises ``BadInputError`` naming the script and the flag."""

    def error(self, message):
        raise BadInputError(f"{self.prog}: {message} (see {self.prog} --help)")


def _number(kind, text, test, rule):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
    return value


def positive_int(text):
    """``type=`` of a flag that takes an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text):
    """``type=`` of a flag that takes an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def fraction(text):
    """``type=`` of a flag that takes a number in [0, 1]."""
    return _number(float, text, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
