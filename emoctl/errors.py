"""Errors that reach the user.

Every error raised for bad input (a missing file, an unknown key, a wrong
shape) is an ``EmoctlError``.  The ``emoctl`` command prints its message as one
paragraph and exits non-zero without a traceback, so the message itself must
name the file, key or value at fault and say how to fix it.
"""
from __future__ import annotations


class EmoctlError(Exception):
    """Base class: a problem with the user's input, explained in the message."""


class ConfigError(EmoctlError, ValueError):
    """A configuration value is invalid or two values disagree."""


class StoreError(EmoctlError):
    """An activation store is missing, corrupt or used inconsistently."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No activation store at the given path."""


class NonFiniteActivationError(StoreError, ValueError):
    """Rows with NaN or Inf: offered to the store writer, or read from a store that was damaged or written by
    other code."""


class NonFiniteError(EmoctlError, ArithmeticError):
    """A loss or a weight became NaN or Inf (training diverged, or it was fed non-finite data)."""


def first_line(err: BaseException) -> str:
    """The gist of a library's error for a one-paragraph message: its first line, first sentence if long."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    if len(text) > 160 and ". " in text:
        text = text.split(". ", 1)[0]
    return text.rstrip(". ")
