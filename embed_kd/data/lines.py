"""Reading text files line by line, plain or gzip-compressed, with errors that name file and line.

Every reader of a user's file (BEIR folders, ``--queries`` / ``--corpus`` files, imported teacher
scores) goes through :func:`iter_lines`, so the same rules hold everywhere:

- ``NAME.gz`` is read through :mod:`gzip` (a BEIR download ships ``corpus.jsonl.gz``); a truncated
  or corrupt archive is one :class:`~embed_kd.errors.DataError` naming the file and the line where
  reading stopped, never a traceback and never a silently shortened file;
- lines are UTF-8; a UTF-8 byte-order mark on line 1 is skipped, a UTF-16/32 file (its BOM) is
  refused with a message saying so;
- line numbers are 1-based and count every line, blank ones included (what an editor shows).

>>> import gzip, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "q.txt.gz"
>>> _ = p.write_bytes(gzip.compress("first\\nsecond\\n".encode()))
>>> [(n, t) for n, t in iter_lines(p)]
[(1, 'first'), (2, 'second')]
>>> _ = p.write_bytes(gzip.compress(("x" * 5000 + "\\n").encode() * 50)[:-40])
>>> list(iter_lines(p))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embed_kd.errors.DataError: .../q.txt.gz:...: the gzip file is truncated or corrupt (...)
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import IO, Iterator

from embed_kd.errors import DataError

_UTF16_32_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
                  b"\xfe\xff": "UTF-16"}
#: what a damaged gzip stream raises while it is read
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def is_gzip(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def base_suffix(path: str | Path) -> str:
    """The extension that says the format, ``.gz`` stripped: ``corpus.jsonl.gz`` → ``.jsonl``.

    >>> base_suffix("a/corpus.jsonl.gz"), base_suffix("q.TSV"), base_suffix("texts")
    ('.jsonl', '.tsv', '')
    """
    p = Path(str(path)[:-3] if is_gzip(path) else str(path))
    return p.suffix.lower()


def open_binary(path: str | Path) -> IO[bytes]:
    """``path`` opened for binary reading, decompressed when it ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")


def decode_line(path: Path, lineno: int, raw: bytes) -> str:
    """One line as text: UTF-8 (a UTF-8 BOM on line 1 skipped); a clear error otherwise."""
    if lineno == 1:
        for bom, name in _UTF16_32_BOMS.items():
            if raw.startswith(bom):
                raise DataError(f"{path}: the file is {name}-encoded (byte-order mark); save it as UTF-8")
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw bytes with the line ending)`` of every line; damaged gzip → DataError."""
    path = Path(path)
    lineno = 0
    with open_binary(path) as fh:
        try:
            for raw in fh:
                lineno += 1
                yield lineno, raw
        except GZIP_ERRORS as exc:
            raise DataError(f"{path}:{lineno + 1}: the gzip file is truncated or corrupt ({exc})") from None


def iter_lines(path: str | Path, *, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """``(line number, text without the line ending)``; blank lines are skipped unless asked."""
    path = Path(path)
    for lineno, raw in iter_raw_lines(path):
        line = decode_line(path, lineno, raw).rstrip("\r\n")
        if skip_blank and not line.strip():
            continue
        yield lineno, line


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of a JSONL file (blank lines skipped); a line that is not JSON, or
    not a JSON object, is one :class:`~embed_kd.errors.DataError` naming ``file:line``."""
    path = Path(path)
    for lineno, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj
