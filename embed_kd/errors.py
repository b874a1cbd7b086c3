"""The one exception type users see.

Every user mistake (a malformed file, an unknown model, a dimension mismatch, an output that
already exists) raises :class:`EmbedKDError` with one sentence that names the file, line or field
at fault. The CLI turns it into ``Error: <message>`` and exit code 2, never a traceback.
"""

from __future__ import annotations


class EmbedKDError(Exception):
    """A clear, user-facing error: the message says what is wrong and where."""


class DataError(EmbedKDError):
    """A data file is malformed or inconsistent (the message names file and line)."""


class ModelNotFoundError(EmbedKDError):
    """A model could not be resolved; the message lists every place that was tried."""


class ArtifactError(EmbedKDError):
    """An on-disk artifact is missing, corrupt, or was produced by something else."""
