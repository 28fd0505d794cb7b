"""Cut an XMPP byte stream into the stream header, top-level elements and the stream's end.

The load generator only needs to know where each top-level element starts and ends, not a full
XML tree, so this scans tags with one regular expression and keeps a depth counter: a few
hundred bytes of state per connection instead of an XML parser each. It relies on what servers
send: no CDATA sections and ``>`` escaped in attribute values (every XMPP server here does both).
"""

from __future__ import annotations

import re

_TAG = re.compile(rb"<([/?!]?)([^\s/>]*)[^>]*?(/?)>")
_ATTR = re.compile(rb"""([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")

STREAM_START = "stream-start"
STREAM_END = "stream-end"
ELEMENT = "element"


class StanzaSplitter:
    """Feed bytes, get back ``(kind, bytes)`` tuples: STREAM_START, ELEMENT or STREAM_END."""

    __slots__ = ("_buffer", "_depth", "_start", "_scan")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: the peer restarts the stream (after STARTTLS or SASL)."""
        self._buffer = b""
        self._depth = 0  # 0 outside the stream, 1 inside <stream:stream>, more inside an element
        self._start = 0  # where the top-level element being read starts
        self._scan = 0  # where to look for the next tag

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        out: list[tuple[str, bytes]] = []
        pos, depth, start = self._scan, self._depth, self._start
        length = len(buffer)
        while pos < length:
            lt = buffer.find(b"<", pos)
            if lt < 0:
                pos = length
                break
            match = _TAG.match(buffer, lt)
            if match is None:  # a tag cut in the middle: wait for more bytes
                pos = lt
                break
            pos = match.end()
            kind, name, empty = match.group(1), match.group(2), match.group(3)
            if kind in (b"?", b"!"):
                continue
            if name == b"stream:stream":
                if kind == b"/":
                    out.append((STREAM_END, b""))
                    depth = 0
                else:
                    out.append((STREAM_START, match.group(0)))
                    depth = 1
                start = pos
                continue
            if kind == b"/":
                depth -= 1
                if depth == 1:
                    out.append((ELEMENT, buffer[start:pos]))
                    start = pos
            elif empty:
                if depth == 1:
                    out.append((ELEMENT, buffer[lt:pos]))
                    start = pos
            else:
                if depth == 1:
                    start = lt
                depth += 1
        # Keep only the unfinished top-level element (or the cut tag) for the next call.
        keep_from = start if depth > 1 else pos
        self._buffer = buffer[keep_from:]
        self._scan = pos - keep_from
        self._start = start - keep_from if depth > 1 else 0
        self._depth = depth
        return out


def element_name(element: bytes) -> bytes:
    """The qualified name of an element's outermost tag (``b"stream:features"``, ``b"message"``)."""
    end = 1
    while end < len(element) and element[end] not in b" \t\r\n/>":
        end += 1
    return element[1:end]


def attributes(tag: bytes) -> dict[bytes, bytes]:
    """The attributes of the first tag in ``tag`` (values not unescaped)."""
    close = tag.find(b">")
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _ATTR.finditer(tag, 0, close)}


def text_of(element: bytes) -> bytes:
    """The character data of a simple element like ``<challenge>abc=</challenge>``."""
    open_end = element.find(b">")
    if element[open_end - 1 : open_end] == b"/":
        return b""
    close = element.rfind(b"</")
    return element[open_end + 1 : close].strip()


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;").replace('"', "&quot;")
