"""Errors the user can act on.

Every error that comes from bad input (a file, a manifest row, a config key, a
bundle) is an :class:`FdrlError`. The CLI prints it as one line and exits with
code 2; it never shows a traceback for these.
"""

from __future__ import annotations


class FdrlError(Exception):
    """Base class: a problem with the user's input, reported in one line."""

    exit_code = 2


class DataError(FdrlError):
    """A corpus file, manifest row, audio file or feature file is unusable."""


class ConfigError(FdrlError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class BundleError(FdrlError):
    """A model bundle or checkpoint is missing, corrupt or incompatible."""


class RunError(FdrlError):
    """A run folder cannot be created, resumed or collected."""
