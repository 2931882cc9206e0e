"""The errors a user can cause in gpt/ (bad config, bad data, bad checkpoint); no torch here."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid model or training configuration."""


class DataError(ValueError):
    """A corpus that cannot be prepared or read."""


class CheckpointError(ValueError):
    """A checkpoint that is missing or cannot be read."""


class OutputError(ValueError):
    """An output that would overwrite an input, or that cannot be written."""
