"""Streams documents out of .jsonl files and big top-level .json arrays without loading the file.

Each yielded item is `(location, value)` where location names the file and line (jsonl) or element
index (json array), and value is the parsed JSON value or a `Malformed` describing why it is not.
A malformed jsonl line (bad JSON, bytes that are not UTF-8, nesting deeper than Python's parser
takes) is skipped and the stream goes on. In a JSON array, an element with non-UTF-8 bytes or too
deep a nesting is skipped the same way; a syntax error ends that file's stream (an array cannot be
resynchronised), after yielding the Malformed item. Only regular files are opened (a named pipe
would block forever).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

_WHITESPACE = " \t\n\r"
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # how errors="surrogateescape" shows a non-UTF-8 byte


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A record that could not be parsed, with the reason."""

    message: str


def _parse_error(err: Exception) -> Malformed:
    if isinstance(err, json.JSONDecodeError):
        return Malformed(f"invalid JSON: {err.msg} at column {err.colno}")
    if isinstance(err, UnicodeDecodeError):
        return Malformed(f"not UTF-8: byte 0x{err.object[err.start]:02x} at column {err.start + 1}")
    return Malformed("JSON nested too deeply to parse")  # RecursionError


def check_regular_file(path: str) -> None:
    """OSError unless `path` is a regular file (FIFOs, devices and sockets are refused, never opened)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path} is not a regular file")


def iter_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    """Yields `("<path>:line N", value | Malformed)` for each non-blank line."""
    check_regular_file(path)
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            location = f"{path}:line {line_no}"
            try:
                yield location, json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
                yield location, _parse_error(err)


class _Buffer:
    """Text window over a file that grows geometrically, so re-parsing after a fill stays O(n)."""

    def __init__(self, f, chunk_chars: int):
        self._f, self._chunk = f, chunk_chars
        self.text, self.pos, self.eof = "", 0, False

    def fill(self) -> bool:
        if self.eof:
            return False
        more = self._f.read(max(self._chunk, len(self.text) - self.pos))
        self.text, self.pos = self.text[self.pos :] + more, 0
        self.eof = not more
        return bool(more)

    def skip_whitespace(self) -> str | None:
        """Advances past whitespace; returns the next character, or None at end of file."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None


def iter_json_array(path: str, chunk_chars: int = 1 << 20, max_record_chars: int = 1 << 28) -> Iterator[tuple[str, Any]]:
    """Yields `("<path>[index N]", value | Malformed)` for each element of a top-level JSON array.

    Uses `json.JSONDecoder.raw_decode` over a sliding window: memory is one element plus a chunk.
    An element longer than `max_record_chars` is reported as Malformed (and ends the file).
    """
    decoder = json.JSONDecoder()
    check_regular_file(path)
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        buf = _Buffer(f, chunk_chars)
        if buf.skip_whitespace() != "[":
            yield f"{path}[index 0]", Malformed("file does not start with a JSON array '['")
            return
        buf.pos += 1
        index = 0
        while True:
            location = f"{path}[index {index}]"
            char = buf.skip_whitespace()
            if char is None:
                yield location, Malformed("unexpected end of file inside the array")
                return
            if char == "]":
                return
            if index > 0:
                if char != ",":
                    yield location, Malformed(f"expected ',' or ']' between elements, found {char!r}")
                    return
                buf.pos += 1
                if buf.skip_whitespace() is None:
                    yield location, Malformed("unexpected end of file after ','")
                    return
            while True:
                try:
                    value, end = decoder.raw_decode(buf.text, buf.pos)
                except RecursionError:
                    end = _end_of_value(buf)
                    if end is None:
                        yield location, Malformed("JSON nested too deeply to parse, and the file ends inside it")
                        return
                    value = Malformed("JSON nested too deeply to parse")
                    break
                except json.JSONDecodeError as err:
                    if len(buf.text) - buf.pos > max_record_chars:
                        yield location, Malformed(f"element longer than {max_record_chars} characters")
                        return
                    if buf.fill():
                        continue
                    yield location, Malformed(f"invalid JSON: {err.msg}")
                    return
                # A number or literal ending exactly at the window edge may continue in the next chunk.
                if end == len(buf.text) and not isinstance(value, (dict, list, str)) and buf.fill():
                    continue
                break
            bad_byte = _UNDECODABLE.search(buf.text, buf.pos, end)
            if bad_byte is not None:
                value = Malformed(f"not UTF-8: byte 0x{ord(bad_byte.group()) - 0xDC00:02x} in this element")
            buf.pos = end
            yield location, value
            index += 1


_STRUCTURE = re.compile(r'[\[\]{}"]')
_STRING_END = re.compile(r'(?:[^"\\]|\\.)*"', re.S)


def _end_of_value(buf: _Buffer) -> int | None:
    """End of the array/object starting at `buf.pos` by bracket counting (strings skipped), filling
    the buffer as needed; None if the file ends first. For values too deep for `json` to parse."""
    while True:
        depth, pos, text = 0, buf.pos, buf.text
        while True:
            match = _STRUCTURE.search(text, pos)
            if match is None:
                break
            char, pos = match.group(), match.end()
            if char == '"':
                string_end = _STRING_END.match(text, pos)
                if string_end is None:
                    break
                pos = string_end.end()
            elif char in "[{":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return pos
        if not buf.fill():
            return None


def iter_documents(path: str) -> Iterator[tuple[str, Any]]:
    """Streams a .jsonl or .json file, or every such file in a directory (sorted, recursive)."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".jsonl", ".json")):
                    child = os.path.join(root, name)
                    try:
                        check_regular_file(child)
                    except OSError as err:
                        yield child, Malformed(str(err))
                        continue
                    yield from iter_documents(child)
        return
    if path.endswith(".jsonl"):
        yield from iter_jsonl(path)
    elif path.endswith(".json"):
        yield from iter_json_array(path)
    else:
        raise ValueError(f"input {path!r} is not a .json, .jsonl or directory")
