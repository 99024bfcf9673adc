"""
A strict, bounded reader for the Lua tables that Prosody's storage writes.

Prosody's internal storage keeps each record as Lua source written by
C{util.serialization}: C{.dat} files hold C{return { ... };} and C{.list}
files a series of C{item({ ... });} lines. Prosody loads them by running them;
this reads them without running anything. It accepts exactly what that
serializer writes (double-quoted strings with C{\\n}-style, C{\\ddd} and
C{\\xXX} escapes; integers, floats, C{(1/0)}, C{(-1/0)}, C{(0/0)}; C{true},
C{false}; tables with positional values and C{[key] = value} entries whose
keys are strings, numbers or booleans) and refuses anything else (a name, a
call, an operator) with L{LuaSyntaxError}. Tables nest at most L{MAX_DEPTH}
deep; the caller bounds the size of what it reads.

Lua strings are bytes; they come back as C{str} decoded from UTF-8 with
C{surrogateescape}, so text reads naturally and binary values (a SCRAM salt)
get their exact bytes back with C{.encode("utf-8", "surrogateescape")}.
Tables come back as C{dict}s; L{sequence} gives their positional part.
"""

from __future__ import annotations

import math
import re

MAX_DEPTH = 128  # util.serialization's own default limit is 127

_SPACE = re.compile(rb"[ \t\r\n]*")
_NUMBER = re.compile(rb"-?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
_SPECIAL = {b"(1/0)": math.inf, b"(-1/0)": -math.inf, b"(0/0)": math.nan}
# A whole string literal: no raw line break, any escape (checked when decoded).
_STRING = re.compile(rb'"((?:[^"\\\r\n]++|\\.)*+)"', re.DOTALL)
_ESCAPE = re.compile(rb"\\(?:\d{1,3}|x[0-9a-fA-F]{2}|\D)", re.DOTALL)


def _escapes() -> dict[bytes, bytes]:
    """Every escape sequence Lua reads in a string, and the byte it stands for."""
    table = {b"\\" + code.encode(): byte for code, byte in (
        ("a", b"\a"), ("b", b"\b"), ("f", b"\f"), ("n", b"\n"), ("r", b"\r"), ("t", b"\t"),
        ("v", b"\v"), ("\\", b"\\"), ('"', b'"'), ("'", b"'"), ("\n", b"\n"))}
    for value in range(256):
        for width in range(len(str(value)), 4):
            table[b"\\" + str(value).zfill(width).encode()] = bytes((value,))
        high, low = f"{value:02x}"
        for form in {a + b for a in (high, high.upper()) for b in (low, low.upper())}:
            table[b"\\x" + form.encode()] = bytes((value,))
    return table


_ESCAPED = _escapes()


class LuaSyntaxError(ValueError):
    """The data is not what Prosody's serializer writes; says where."""


def sequence(table: dict) -> list:
    """The positional values of a table (keys 1, 2, ... without a gap), in order."""
    values = []
    while len(values) + 1 in table:
        values.append(table[len(values) + 1])
    return values


class _Reader:
    """One pass over one file's bytes."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.name = name
        self.pos = 0

    def fail(self, message: str):
        line = self.data.count(b"\n", 0, self.pos) + 1
        column = self.pos - (self.data.rfind(b"\n", 0, self.pos) + 1) + 1
        raise LuaSyntaxError(f"{self.name}:{line}:{column}: {message}")

    def skip(self) -> None:
        self.pos = _SPACE.match(self.data, self.pos).end()

    def expect(self, token: bytes) -> None:
        self.skip()
        if not self.data.startswith(token, self.pos):
            found = self.data[self.pos:self.pos + 12].decode("utf-8", "replace")
            self.fail(f"expected {token.decode()!r}, found {found!r}" if found else
                      f"expected {token.decode()!r} at the end of the data")
        self.pos += len(token)

    def at(self, token: bytes) -> bool:
        self.skip()
        return self.data.startswith(token, self.pos)

    def atEnd(self) -> bool:
        self.skip()
        return self.pos == len(self.data)

    def value(self, depth: int):
        self.skip()
        data, pos = self.data, self.pos
        head = data[pos:pos + 1]
        if head == b'"':
            return self.string()
        if head == b"{":
            return self.table(depth + 1)
        for word, result in ((b"true", True), (b"false", False)):
            if data.startswith(word, pos) and not data[pos + len(word):pos + len(word) + 1].isalnum():
                self.pos += len(word)
                return result
        for text, result in _SPECIAL.items():
            if data.startswith(text, pos):
                self.pos += len(text)
                return result
        match = _NUMBER.match(data, pos)
        if match and not data[match.end():match.end() + 1].isalnum():
            self.pos = match.end()
            text = match.group()
            return float(text) if any(c in text for c in b".eE") else int(text)
        found = data[pos:pos + 12].decode("utf-8", "replace")
        self.fail(f"expected a string, number, boolean or table, found {found!r}"
                  if found else "unexpected end of the data")

    def string(self) -> str:
        match = _STRING.match(self.data, self.pos)
        if match is None:
            self.fail("unfinished string")
        body = match.group(1)
        if b"\\" in body:
            try:
                body = _ESCAPE.sub(lambda escape: _ESCAPED[escape.group()], body)
            except KeyError:
                self.fail("invalid escape sequence")
        self.pos = match.end()
        return body.decode("utf-8", "surrogateescape")

    def table(self, depth: int) -> dict:
        if depth > MAX_DEPTH:
            self.fail(f"tables nested deeper than {MAX_DEPTH}")
        self.pos += 1
        table: dict = {}
        position = 1
        while not self.at(b"}"):
            if self.at(b"["):
                self.pos += 1
                self.skip()
                key = self.value(depth)
                if isinstance(key, dict) or (isinstance(key, float) and math.isnan(key)):
                    self.fail("a table key must be a string, number or boolean")
                self.expect(b"]")
                self.expect(b"=")
                if key in table:
                    self.fail(f"duplicate key {key!r}")
                table[key] = self.value(depth)
            else:
                if position in table:
                    self.fail(f"duplicate key {position!r}")
                table[position] = self.value(depth)
                position += 1
            if self.at(b";"):
                self.pos += 1
            elif not self.at(b"}"):
                self.fail("expected ';' or '}' after a table entry")
        self.pos += 1
        return table


def loadRecord(data: bytes, name: str = "<data>"):
    """The value of a C{.dat} file: C{return VALUE;}."""
    reader = _Reader(data, name)
    reader.expect(b"return")
    if reader.data[reader.pos:reader.pos + 1].isalnum():
        reader.fail("expected 'return'")
    value = reader.value(0)
    if reader.at(b";"):
        reader.pos += 1
    if not reader.atEnd():
        reader.fail("unexpected data after the value")
    return value


def loadList(data: bytes, name: str = "<data>") -> list:
    """The items of a C{.list} file: C{item(VALUE);} repeated."""
    reader = _Reader(data, name)
    items = []
    while not reader.atEnd():
        reader.expect(b"item(")
        items.append(reader.value(0))
        reader.expect(b")")
        if reader.at(b";"):
            reader.pos += 1
    return items
