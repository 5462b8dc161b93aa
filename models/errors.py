"""The errors ``eigpool-train``, ``eigpool-evaluate`` and ``eigpool-attribute`` report as a message and exit status 2.

Each names what is wrong (the setting, the file, the value) and what is allowed; the commands print it without a
traceback. Data-set errors are ``eigpool.models.data.DatasetLayoutError`` and ``ImageReadError``; a diverged run is
``eigpool.models.engine.TrainingDiverged``.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "SettingsError"]


class SettingsError(ValueError):
    """A setting, a settings file, or a file or device a setting names is invalid or unavailable."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of another format version, or does not fit the network it describes."""
