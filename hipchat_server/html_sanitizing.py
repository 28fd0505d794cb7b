"""HTML in notifications: cut down to HipChat's allowed tags, and the plain text every XMPP client can show.

HipChat lets integrations post HTML notifications with a small set of tags
(links, bold and italics, line breaks, images, preformatted text and code,
lists, tables, paragraphs, spans). Anything else (scripts, styles, event
handlers, ``javascript:`` links) is removed by ``nh3`` (the Ammonia
sanitiser): a maintained parser, not a regular expression, because what
browsers accept as HTML is far wider than what one would think to match.
"""

from __future__ import annotations

from html.parser import HTMLParser

import nh3

ALLOWED_TAGS = frozenset(
    {
        "a", "b", "i", "strong", "em", "br", "img", "pre", "code",
        "ul", "ol", "li", "table", "thead", "tbody", "tfoot", "tr", "th", "td", "p", "span",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
# Tags after which the plain text starts a new line.
_BREAKING = frozenset({"br", "p", "li", "tr", "pre", "table", "ul", "ol"})


def sanitize(markup: str) -> str:
    """``markup`` with only HipChat's allowed tags and attributes; links get ``rel="noopener noreferrer"``."""
    return nh3.clean(
        markup,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


class _TextCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "br":
            self.parts.append("\n")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.parts.append(alt)
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in _BREAKING and tag != "br":
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def plain_text(markup: str) -> str:
    """The text of (sanitised) ``markup`` for an XMPP ``<body>``: tags dropped, entities decoded, breaks kept as newlines."""
    collector = _TextCollector()
    collector.feed(markup)
    collector.close()
    lines = [" ".join(line.split()) for line in "".join(collector.parts).split("\n")]
    return "\n".join(line for line in lines if line)  # entities were decoded by the parser (convert_charrefs)
