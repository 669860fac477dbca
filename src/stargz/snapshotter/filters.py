"""containerd's filter syntax, as List requests carry it.

containerd's metadata layer finds the snapshot a remote Prepare committed by walking the backend
with ``labels."containerd.io/snapshot.ref"==<chain id>,parent=="<parent>"``, and ``ctr snapshots
ls`` may pass user filters, so List honours the grammar of containerd's ``filters`` package:

    selectors := selector ("," selector)*
    selector  := fieldpath (operator value)?
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_]+
    operator  := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+
    quoted    := "..." (Go escapes); /.../ or |...| only after ~=

A list of filter strings matches when any one of them matches (each is an AND of selectors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stargz.errors import InvalidArgumentError

# A field lookup: fieldpath -> (value, present), like containerd's filters.Adaptor.
Adaptor = Callable[[Sequence[str]], tuple[str, bool]]

_QUOTES = '"/|'
_OPERATOR_CHARS = "=!~"
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_NUMERIC_ESCAPES = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: str  # "?" (present), "==", "!=" or "~="
    value: str = ""

    def matches(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        if self.operator == "?":
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        return re.search(self.value, value) is not None


@dataclass(frozen=True)
class Filter:
    """An OR of AND-ed selector lists; no selectors at all matches everything."""

    alternatives: tuple[tuple[Selector, ...], ...]

    def matches(self, adaptor: Adaptor) -> bool:
        if not self.alternatives:
            return True
        return any(all(s.matches(adaptor) for s in sels) for sels in self.alternatives)


def parse_filters(filters: Sequence[str]) -> Filter:
    """Parse List's filter strings; raises InvalidArgumentError on bad syntax."""
    alternatives: list[tuple[Selector, ...]] = []
    for text in filters:
        if text == "":
            return Filter(())  # containerd: an empty filter string always matches
        alternatives.append(_Parser(text).selectors())
    return Filter(tuple(alternatives))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"filter {self.text!r}: {why} at offset {self.pos}")

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def selectors(self) -> tuple[Selector, ...]:
        found = [self.selector()]
        while (ch := self.peek()) == ",":
            self.pos += 1
            found.append(self.selector())
        if ch:
            raise self.fail(f"unexpected input {ch!r}")
        return tuple(found)

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        ch = self.peek()
        if ch in ("", ","):
            return Selector(tuple(path), "?")
        operator = self.operator()
        value = self.value(allow_alt_quotes=operator == "~=")
        if operator == "~=":
            try:
                re.compile(value)
            except re.error as err:
                raise self.fail(f"bad regular expression: {err}") from None
        return Selector(tuple(path), operator, value)

    def field(self) -> str:
        ch = self.peek()
        if ch == '"':
            return self.quoted()
        match = re.compile(r"[A-Za-z0-9_]+").match(self.text, self.pos)
        if not match:
            raise self.fail("expected field or quoted")
        self.pos = match.end()
        return match.group()

    def operator(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _OPERATOR_CHARS:
            self.pos += 1
        operator = self.text[start : self.pos]
        if operator not in ("==", "!=", "~="):
            self.pos = start
            raise self.fail('expected an operator ("=="|"!="|"~=")')
        return operator

    def value(self, allow_alt_quotes: bool) -> str:
        ch = self.peek()
        if ch in _QUOTES:
            if ch != '"' and not allow_alt_quotes:
                raise self.fail("invalid quote encountered")
            return self.quoted()
        match = re.compile(r"[^\s,]+").match(self.text, self.pos)
        if not match:
            raise self.fail("expected value or quoted")
        self.pos = match.end()
        return match.group()

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.fail("quoted literal not terminated")
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            out.append(self.escape(quote) if ch == "\\" else ch)

    def escape(self, quote: str) -> str:
        ch = self.text[self.pos : self.pos + 1]
        self.pos += 1
        if ch in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[ch]
        if ch == quote:
            return ch
        if ch in _NUMERIC_ESCAPES or (ch.isdigit() and ch < "8"):
            base, width = _NUMERIC_ESCAPES.get(ch, (8, 3))
            start = self.pos if ch in _NUMERIC_ESCAPES else self.pos - 1
            digits = self.text[start : start + width]
            try:
                code = int(digits, base) if len(digits) == width else -1
            except ValueError:
                code = -1
            if not 0 <= code <= 0x10FFFF:
                raise self.fail("illegal numeric escape sequence")
            self.pos = start + width
            return chr(code)
        raise self.fail("illegal escape sequence")
