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


def describe_parse_error(exc: BaseException) -> str:
    """A parser's error on one line: ``line L, column C: problem`` for YAML errors that carry a
    position, otherwise the message with its line breaks folded (messages are one line).

    >>> import yaml
    >>> try:
    ...     yaml.safe_load("a: [1, 2")
    ... except yaml.YAMLError as exc:
    ...     print(describe_parse_error(exc))
    line 1, column 9: expected ',' or ']', but got '<stream end>'
    >>> describe_parse_error(UnicodeDecodeError("utf-8", b"\\xe9", 0, 1, "invalid continuation byte"))
    'not valid UTF-8 (invalid continuation byte at byte 0)'
    """
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())
