"""The safe incremental XML parser behind every client stream (RFC 6120 section 4 and 11).

We drive expat ourselves, rather than through domish.ExpatElementStream, to
enforce limits *while* parsing: bytes per stanza and per stream header,
nesting depth, elements per stanza, attributes, and the size of a token expat
still holds. DTDs, entity declarations and references, comments and
processing instructions are refused (RFC 6120 11.1), so an XML bomb is
rejected before anything is expanded. Stanzas come out as
`twisted.words.xish.domish` elements; no networking here.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from xml.parsers import expat

from twisted.words.xish import domish

from hipchat_server.xmpp.errors import STREAM_NS, StreamError

CLIENT_NS = "jabber:client"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# A start tag through its closing '>' ('>' may appear inside quoted attribute values).
_START_TAG = re.compile(rb"<[^>'\"]*(?:(?:'[^']*'|\"[^\"]*\")[^>'\"]*)*>")
_UNDEFINED_ENTITY = expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]
_RESTRICTED_HANDLERS = """StartDoctypeDeclHandler EntityDeclHandler UnparsedEntityDeclHandler NotationDeclHandler
    ElementDeclHandler AttlistDeclHandler ProcessingInstructionHandler CommentHandler
    ExternalEntityRefHandler SkippedEntityHandler""".split()


@dataclass(frozen=True)
class StreamLimits:
    """What one client stream may send. Sizes are in bytes as received (UTF-8)."""

    max_stanza_size_unauthenticated: int = 8 * 1024
    max_stanza_size: int = 256 * 1024
    max_header_size: int = 8 * 1024
    #: Longest partial token (an unfinished tag) expat may hold. Expat rescans a
    #: partial token on every feed, so this bounds the cost of a tag sent a byte at a time.
    max_token_size: int = 16 * 1024
    max_depth: int = 32  # elements nested in a stanza, the stanza counting as 1
    max_stanza_elements: int = 1000  # a domish element costs ~100 times its '<a/>'
    max_attributes: int = 64  # per element, namespace declarations included
    max_attribute_length: int = 4096  # characters per attribute value
    rate_bytes_per_second: float | None = 32 * 1024  # None: no rate limit
    rate_burst_bytes: int = 128 * 1024


class _Interrupted(Exception):
    """Unwinds expat after an event at whose end (``offset``) the caller asked to stop."""

    def __init__(self, offset: int):
        self.offset = offset


def _policy(text: str) -> StreamError:
    return StreamError("policy-violation", text)


def _qname(name: str) -> tuple[str, str]:
    uri, _, local = name.rpartition(" ")
    return uri, local


class StreamParser:
    """Parse one XML stream incrementally, refusing anything unsafe.

    Calls ``on_start(attrs)`` for the stream header, ``on_stanza(element)`` for
    each complete first-level child and ``on_end()`` for ``</stream:stream>``;
    `feed` raises StreamError on any violation, after which the parser is dead.
    One parser serves one stream: a stream restart needs a new parser.
    """

    def __init__(self, limits, max_stanza_size, on_start, on_stanza, on_end, content_ns=CLIENT_NS):
        self.limits = limits
        self.max_stanza_size = max_stanza_size  # settable: it grows on authentication
        self._on_start, self._on_stanza, self._on_end = on_start, on_stanza, on_end
        self._content_ns = content_ns
        self._expat = p = expat.ParserCreate("UTF-8", " ")
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        if hasattr(p, "SetReparseDeferralEnabled"):
            # Deferral (expat >= 2.6) would hold a stanza's last bytes until more data
            # arrives, hanging an interactive stream; max_token_size bounds the cost instead.
            p.SetReparseDeferralEnabled(False)
        p.StartElementHandler, p.EndElementHandler = self._start, self._end
        p.CharacterDataHandler, p.XmlDeclHandler = self._text, self._xml_declaration
        p.StartNamespaceDeclHandler = self._namespace_start
        p.EndNamespaceDeclHandler = self._namespace_end
        for handler in _RESTRICTED_HANDLERS:
            setattr(p, handler, self._restricted)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._fed = self._base = 0  # bytes given to expat; offset of the chunk being parsed
        self._chunk = self._tail = b""  # that chunk; the two bytes before it
        self._prolog = bytearray()  # everything up to the stream header, to measure it
        self._depth, self._default_ns, self._prefixes, self._declarations = 0, [""], {}, 0
        self._current = None  # the element being built
        self._stanza_start = self._start_events = self._elements = self._events = 0
        self._text_parts: list[str] = []  # joined once: domish's addContent copies on each call
        self._interrupted = False

    def interrupt(self) -> None:
        """Stop after the event being delivered; `feed` then returns the bytes that follow it."""
        self._interrupted = True

    def feed(self, data: bytes) -> bytes | None:
        """Parse ``data``; None, or after `interrupt` the unparsed rest of ``data``."""
        try:
            self._utf8.decode(data)
        except UnicodeDecodeError:
            raise StreamError("unsupported-encoding", "the stream is not valid UTF-8") from None
        self._base, self._chunk = self._fed, data
        self._fed += len(data)
        if self._depth == 0:
            self._prolog += data
        try:
            self._expat.Parse(data, False)
        except _Interrupted as stop:
            return data[stop.offset - self._base :]
        except expat.ExpatError as e:
            if e.code == _UNDEFINED_ENTITY:
                raise StreamError("restricted-xml", "only the predefined entities may be used") from None
            raise StreamError("not-well-formed", expat.ErrorString(e.code)) from None
        finally:
            self._chunk = b""  # an idle stream must not keep its last read (up to 64 KiB) alive
        self._tail = (self._tail + data)[-2:]
        self._check_pending()
        return None

    def _check_pending(self) -> None:
        # After Parse, CurrentByteIndex is the first byte expat has not consumed.
        pending = self._fed - max(self._expat.CurrentByteIndex, 0)
        if pending > self.limits.max_token_size:
            raise _policy(f"an XML tag is larger than {self.limits.max_token_size} bytes")
        if self._depth == 0 and self._fed > self.limits.max_header_size:
            raise _policy(f"the stream header is larger than {self.limits.max_header_size} bytes")
        started = self._fed - self._stanza_start if self._depth > 1 else pending
        if self._depth > 0 and started > self.max_stanza_size:
            raise _policy(f"a stanza is larger than {self.max_stanza_size} bytes")

    def _deliver(self, callback, *args, offset: int) -> None:
        callback(*args)
        if self._interrupted:
            raise _Interrupted(offset)

    def _start(self, name: str, attrs: dict) -> None:
        index, self._events = self._expat.CurrentByteIndex, self._events + 1
        limits = self.limits
        if len(attrs) + self._declarations > limits.max_attributes:
            raise _policy(f"an element has more than {limits.max_attributes} attributes")
        if any(len(value) > limits.max_attribute_length for value in attrs.values()):
            raise _policy(f"an attribute is longer than {limits.max_attribute_length} characters")
        attributes = {(_qname(k) if " " in k else k): v for k, v in attrs.items()}
        element = domish.Element(_qname(name), self._default_ns[-1], attributes, self._prefixes)
        self._prefixes, self._declarations = {}, 0
        if self._depth == 0:
            return self._header(index, element)
        self._depth += 1
        if self._depth - 1 > limits.max_depth:
            raise _policy(f"elements are nested deeper than {limits.max_depth}")
        if self._depth == 2:
            self._stanza_start, self._start_events, self._elements = index, self._events, 0
        else:
            self._flush_text()
            self._current.addChild(element)
        self._elements += 1
        if self._elements > limits.max_stanza_elements:
            raise _policy(f"a stanza has more than {limits.max_stanza_elements} elements")
        self._current = element

    def _header(self, index: int, element: domish.Element) -> None:
        match = _START_TAG.match(self._prolog, index)
        end = match.end() if match else len(self._prolog)
        if end > self.limits.max_header_size:
            raise _policy(f"the stream header is larger than {self.limits.max_header_size} bytes")
        self._prolog = bytearray()
        if (element.uri, element.name) != (STREAM_NS, "stream"):
            raise StreamError("invalid-namespace", f"the root element must be <stream xmlns='{STREAM_NS}'>")
        if element.defaultUri != self._content_ns:
            raise StreamError("invalid-namespace", f"the default namespace must be {self._content_ns}")
        self._depth, self._start_events = 1, self._events
        attrs = {}
        for key, value in element.attributes.items():
            if isinstance(key, tuple):
                key = f"xml:{key[1]}" if key[0] == XML_NS else "{%s}%s" % key
            attrs[key] = value
        self._deliver(self._on_start, attrs, offset=end)

    def _end(self, name: str) -> None:
        index, self._events = self._expat.CurrentByteIndex, self._events + 1
        if self._depth == 1:
            self._depth, end = 0, self._element_end(index)
            self._deliver(self._on_end, offset=end)
            raise _Interrupted(end)  # nothing may follow the stream
        self._flush_text()
        element, self._depth = self._current, self._depth - 1
        if self._depth > 1:
            self._current = element.parent
            return
        end = self._element_end(index)
        if end - self._stanza_start > self.max_stanza_size:
            raise _policy(f"a stanza is larger than {self.max_stanza_size} bytes")
        self._current = None
        self._deliver(self._on_stanza, element, offset=end)

    def _element_end(self, index: int) -> int:
        """The offset just past the end of the element (stanza or stream) that ends at ``index``."""
        # Expat reports an empty element's end at the end of its tag, and a closing
        # tag's end at its '<'. An empty element has no event between its start and
        # end and '/>' just before the index; '<a></a>' has '>' after a name or quote there.
        at = index - self._base
        if self._events == self._start_events + 1 and at >= 1:
            before = self._chunk[at - 2 : at] if at >= 2 else self._tail[-1:] + self._chunk[:1]
            if before == b"/>":
                return index
        # Expat reports a closing tag once its '>' arrived, so that '>' is in this
        # chunk; a closing tag has no attributes, so the first '>' ends it.
        found = self._chunk.find(b">", max(0, at))
        return self._base + found + 1 if found >= 0 else self._fed

    def _text(self, data: str) -> None:
        self._events += 1
        if self._depth > 1:
            self._text_parts.append(data)
        elif data.strip(" \t\r\n"):  # whitespace keepalives are fine between stanzas
            raise StreamError("bad-format", "text is not allowed between stanzas")

    def _flush_text(self) -> None:
        if self._text_parts:
            self._current.addContent("".join(self._text_parts))
            self._text_parts = []

    def _namespace_start(self, prefix: str | None, uri: str | None) -> None:
        self._declarations += 1
        if prefix is None:
            self._default_ns.append(uri or "")
        else:
            self._prefixes[prefix] = uri or ""

    def _namespace_end(self, prefix: str | None) -> None:
        if prefix is None:
            self._default_ns.pop()

    def _xml_declaration(self, version: str, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
            raise StreamError("unsupported-encoding", "XMPP streams are UTF-8")

    def _restricted(self, *args) -> None:
        raise StreamError("restricted-xml", "DTDs, entities, comments and processing instructions are not allowed")
