"""Names from images made safe to show: control characters escaped before they reach a
terminal or a log.

An image names its files as it likes; printed raw, a name holding ``ESC [`` sequences, a
carriage return, a C1 CSI or a bidi override can rewrite what the terminal shows (or forge log
lines). Everything here escapes each character Python calls unprintable (``str.isprintable``:
C0 and C1 controls, DEL, format characters such as U+202E, line and paragraph separators, lone
surrogates from undecodable bytes, non-ASCII spaces), the way ``repr`` writes it: ``\\x1b``,
``\\n``, ``\\u202e``.

    printable(text)      for messages and log lines
    quote_name(name)     for listings: backslashes doubled too, so two names never look alike
    printable_json(text) JSON text for a terminal: the same escapes in JSON's \\uXXXX syntax
    PrintableFormatter   a logging formatter whose message part goes through printable()
"""

from __future__ import annotations

import logging

_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every unprintable character written as its escape."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def quote_name(name: str) -> str:
    """A name as a listing shows it: unprintable characters escaped and backslashes doubled,
    so that the shown form is unique (a name really holding ``\\x1b`` shows as ``\\\\x1b``)."""
    return printable(name.replace("\\", "\\\\"))


def printable_json(text: str) -> str:
    """JSON text with every unprintable character but its layout (newline, tab) written as a
    ``\\uXXXX`` escape: inside a string that is the same JSON value, so the document still
    parses the same."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON writes characters past the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class PrintableFormatter(logging.Formatter):
    """Escapes the message of each record (names of files, layers, hosts may come from an
    image or a registry); a traceback appended with ``--debug`` keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)
