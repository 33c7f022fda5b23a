"""Error types for bad user input (reported as one clear line by the entry points)."""

from __future__ import annotations


class DataError(ValueError):
    """A data, annotation or vocabulary file is missing or malformed; the message names the file/record."""


class RunError(RuntimeError):
    """A run cannot go on (an unusable checkpoint, a full disk, diverged training, a lost rank, a used output
    folder); the message says what happened, what is intact and what to do."""


class NonFiniteError(RunError):
    """Training produced NaN or infinite numbers (a loss, a gradient, similarities): the run diverged."""
