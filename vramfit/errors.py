"""Errors a user can cause; the CLI turns each into one line and exit code 2."""

from __future__ import annotations

from gpt.errors import CheckpointError, ConfigError, DataError, OutputError
from vramfit.units import SizeError


class VramfitError(Exception):
    """A user-facing error raised by vramfit itself (bad input, missing file, corrupt store, ...)."""


USER_ERRORS: tuple[type[BaseException], ...] = (VramfitError, ConfigError, DataError, CheckpointError, OutputError,
                                                SizeError)
