"""Reading a file that anyone may have put there, safely: regular files only (opened without following a link
and without blocking, so a FIFO never hangs a reader), of bounded size, and JSON of bounded nesting, counted on the
text before the parser recurses. :mod:`ltbench.results.reader` builds the record reader on these, and
:func:`ltbench.results.records.load_result` reads a run's own record with them; this module imports nothing else
of ltbench's results, so both can.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ltbench.errors import LtbenchError

#: the largest record (or JSON file beside it) read: a record of 20,000 classes is about 2 MiB
MAX_BYTES = 8 * 2**20
#: how deeply a JSON file may nest arrays and objects (a record nests 5 deep)
MAX_DEPTH = 32


class Unreadable(LtbenchError):
    """A file a command cannot read safely; the message names the file and why."""


# ---------------------------------------------------------------------------------------------------------------
# files


def read_bytes(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``). Opened without following a link and without
    blocking (a FIFO opens at once), and checked to be a regular file before anything is read."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable(f"{path}: not a regular file (a link; links are not followed)") from None
        raise Unreadable(f"{path}: cannot be opened ({exc.strerror or type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"{path}: not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise Unreadable(f"{path}: {info.st_size} bytes, more than the {limit} bytes read of such a file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while being read
            raise Unreadable(f"{path}: more than the {limit} bytes read of such a file")
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)


def regular_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file that a command may open (None when it is one): for files too large
    for :func:`read_bytes` (a model), checked before they are opened; a link is not followed."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
    return None if stat.S_ISREG(mode) else f"{path}: not a regular file ({_kind(mode)})"


def _kind(mode: int) -> str:
    return ("a link; links are not followed" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket")


#: a JSON string, or an unterminated one up to the end of the text; unrolled, so that it never backtracks
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str, stop_above: int = MAX_DEPTH) -> int:
    """How deeply the JSON ``text`` nests arrays and objects (brackets inside strings do not count), counted
    without parsing it; counting stops at the first level deeper than ``stop_above``."""
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > stop_above:
                break
    return deepest


def read_json(path: Path, limit: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in the regular file ``path`` (:func:`read_bytes`); refused (:class:`Unreadable`) when it is
    not UTF-8 JSON or nests deeper than ``max_depth``, which is checked before the parser sees it."""
    data = read_bytes(path, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable(f"{path}: not UTF-8 text") from None
    if nesting_depth(text, max_depth) > max_depth:
        raise Unreadable(f"{path}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Unreadable(f"{path}: not readable JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
