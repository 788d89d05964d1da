"""Streams documents out of .jsonl files and big top-level .json arrays without loading the file.

Each yielded item is `(location, value)` where location names the file and line (jsonl) or element
index (json array), and value is the parsed JSON value or a `Malformed` describing why it is not.
A malformed jsonl line is skipped and the stream goes on; a syntax error inside a JSON array ends
that file's stream (an array cannot be resynchronised), after yielding the Malformed item.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

_WHITESPACE = " \t\n\r"


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A record that could not be parsed, with the reason."""

    message: str


def iter_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    """Yields `("<path>:line N", value | Malformed)` for each non-blank line."""
    with open(path, encoding="utf-8", errors="strict") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            location = f"{path}:line {line_no}"
            try:
                yield location, json.loads(line)
            except json.JSONDecodeError as err:
                yield location, Malformed(f"invalid JSON: {err.msg} at column {err.colno}")


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
    with open(path, encoding="utf-8", errors="strict") as f:
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
            buf.pos = end
            yield location, value
            index += 1


def iter_documents(path: str) -> Iterator[tuple[str, Any]]:
    """Streams a .jsonl or .json file, or every such file in a directory (sorted, recursive)."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".jsonl", ".json")):
                    yield from iter_documents(os.path.join(root, name))
        return
    if path.endswith(".jsonl"):
        yield from iter_jsonl(path)
    elif path.endswith(".json"):
        yield from iter_json_array(path)
    else:
        raise ValueError(f"input {path!r} is not a .json, .jsonl or directory")
