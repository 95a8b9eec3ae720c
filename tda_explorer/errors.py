"""The package's exception hierarchy: one module, a few classes.

Every error a user can cause says what was wrong, where (file, row, column,
field) and what to do about it. Catch `TDAError` to catch them all.
"""

from __future__ import annotations


class TDAError(Exception):
    """Base class of every error raised on purpose by tda_explorer."""


class DataError(TDAError, ValueError):
    """A dataset or user file cannot be used as given (names the file/row/column)."""


class ConfigError(TDAError, ValueError):
    """A configuration value is out of range or inconsistent."""


class NotFittedError(TDAError, RuntimeError):
    """A method that needs `fit` was called before it."""


class ArtifactError(TDAError, RuntimeError):
    """A workspace artifact is missing, unreadable, or was made by a different config."""


class Cancelled(TDAError, RuntimeError):
    """A long step was stopped on request (`tda_explorer.progress.cancel_scope`); finished parts are kept."""


def check_choice(what: str, value: object, choices) -> None:
    """ConfigError `"<what> <value!r> is not one of <choices>."` unless `value` is one of `choices`."""
    if value not in choices:
        shown = sorted(choices) if isinstance(choices, (set, frozenset, dict)) else tuple(choices)
        raise ConfigError(f"{what} {value!r} is not one of {shown}.")
