"""Entity Capabilities (XEP-0115): a short hash of what an entity answers to disco#info.

An entity advertises ``<c xmlns='http://jabber.org/protocol/caps' hash='sha-1'
node='...' ver='...'/>`` (clients in presence, the server in its stream
features); whoever sees a ``ver`` it knows need not ask disco#info again. The
``ver`` is the base64 SHA-1 of the verification string of section 5.1, built
from the identities, features and extended info forms (XEP-0128) of the
disco#info answer. A ``ver`` received from someone else is cached only after
the disco#info answered for ``node#ver`` hashes to it (section 5.4).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from twisted.words.xish import domish

from hipchat_server.xmpp.xml_parser import XML_NS

CAPS_NS = "http://jabber.org/protocol/caps"
DATA_FORMS_NS = "jabber:x:data"
#: The URI naming this server software in its caps ``node`` (XEP-0115 section 4: it identifies the product).
SERVER_NODE = "https://hipchat.example/server"
#: The hash functions this module computes, by their IANA name as XEP-0115 uses it.
HASH_FUNCTIONS = {"sha-1": hashlib.sha1, "sha-256": hashlib.sha256}


class InvalidCapsInfo(ValueError):
    """A disco#info answer that section 5.4 calls ill-formed: its ``ver`` is never trusted."""


@dataclass(frozen=True, order=True)
class Identity:
    """A disco#info identity; the field order is the sort order of section 5.1 step 2."""

    category: str
    type: str
    lang: str = ""
    name: str = ""


#: An extended info form (XEP-0128): each field ``var`` with its values, FORM_TYPE included.
Form = Mapping[str, Sequence[str]]


def verification_string(identities: Iterable[Identity], features: Iterable[str], forms: Iterable[Form] = ()) -> str:
    """The string S of XEP-0115 section 5.1, before hashing.

    Every part is sorted in Unicode code point order, which is the byte order
    of UTF-8 and so the "i;octet" collation the section asks for. A form
    without FORM_TYPE takes no part.
    """
    parts = [f"{i.category}/{i.type}/{i.lang}/{i.name}" for i in sorted(identities)]
    parts += sorted(features)
    typed = [form for form in forms if form.get("FORM_TYPE")]
    for form in sorted(typed, key=lambda f: f["FORM_TYPE"][0]):
        parts.append(form["FORM_TYPE"][0])
        for var in sorted(v for v in form if v != "FORM_TYPE"):
            parts.append(var)
            parts += sorted(form[var])
    return "".join(part + "<" for part in parts)


def verification_hash(
    identities: Iterable[Identity], features: Iterable[str], forms: Iterable[Form] = (), hash_name: str = "sha-1"
) -> str:
    """The ``ver`` attribute: base64 (no whitespace) of the hash of the UTF-8 verification string."""
    digest = HASH_FUNCTIONS[hash_name](verification_string(identities, features, forms).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def _form_fields(x: domish.Element) -> dict[str, list[str]] | None:
    """The fields of a data form, or None for a form caps ignores (no hidden FORM_TYPE)."""
    fields: dict[str, list[str]] = {}
    for field in x.elements(DATA_FORMS_NS, "field"):
        var = field.getAttribute("var")
        if var is None:
            continue
        if var in fields:
            raise InvalidCapsInfo(f"form field {var!r} appears twice")
        fields[var] = [str(value) for value in field.elements(DATA_FORMS_NS, "value")]
        if var == "FORM_TYPE":
            if len(set(fields[var])) > 1:
                raise InvalidCapsInfo("a FORM_TYPE field with different values")
            if field.getAttribute("type") != "hidden":
                return None  # section 5.4: ignore such a form, keep the rest
    return fields if fields.get("FORM_TYPE") else None


def parse_info(query: domish.Element) -> tuple[list[Identity], list[str], list[dict[str, list[str]]]]:
    """The identities, features and forms of a disco#info ``<query/>``, checked as section 5.4 says.

    Raises InvalidCapsInfo for a repeated identity (same category, type,
    language and name), a repeated feature, or two forms with one FORM_TYPE.
    """
    identities = [
        Identity(
            e.getAttribute("category", ""),
            e.getAttribute("type", ""),
            e.getAttribute((XML_NS, "lang"), ""),
            e.getAttribute("name", ""),
        )
        for e in query.elements(query.uri, "identity")
    ]
    features = [e.getAttribute("var", "") for e in query.elements(query.uri, "feature")]
    forms = [f for f in (_form_fields(x) for x in query.elements(DATA_FORMS_NS, "x")) if f is not None]
    if len(set(identities)) != len(identities):
        raise InvalidCapsInfo("an identity appears twice")
    if len(set(features)) != len(features):
        raise InvalidCapsInfo("a feature appears twice")
    form_types = [form["FORM_TYPE"][0] for form in forms]
    if len(set(form_types)) != len(form_types):
        raise InvalidCapsInfo("two forms share one FORM_TYPE")
    return identities, features, forms


def info_hash(query: domish.Element, hash_name: str = "sha-1") -> str:
    """The ``ver`` of a disco#info ``<query/>``; raises InvalidCapsInfo when it is ill-formed."""
    identities, features, forms = parse_info(query)
    return verification_hash(identities, features, forms, hash_name)


def caps_element(node: str, ver: str, hash_name: str = "sha-1") -> domish.Element:
    """``<c xmlns='http://jabber.org/protocol/caps' hash=... node=... ver=.../>``."""
    element = domish.Element((CAPS_NS, "c"))
    element["hash"], element["node"], element["ver"] = hash_name, node, ver
    return element


@functools.lru_cache(maxsize=1)
def server_ver() -> str:
    """The ``ver`` of the server's own disco#info (its features are fixed for the life of a process)."""
    from hipchat_server.xmpp import disco  # disco asks this module for the node it answers to

    return info_hash(disco.server_info())


def server_caps_node() -> str:
    """``node#ver``: the disco#info node the server answers exactly like its plain disco#info."""
    return f"{SERVER_NODE}#{server_ver()}"


def server_caps_element() -> domish.Element:
    """The server's ``<c/>`` for its stream features."""
    return caps_element(SERVER_NODE, server_ver())


class CapsCache:
    """The verified disco#info answers of the ``ver`` values seen, least recently used dropped first.

    ``add`` keeps an answer only when it hashes to the ``ver`` it was asked
    for, so one client cannot poison what others are believed to support.
    """

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[frozenset[Identity], frozenset[str]]] = OrderedDict()

    def get(self, ver: str, hash_name: str = "sha-1") -> tuple[frozenset[Identity], frozenset[str]] | None:
        """The identities and features known for ``ver``, or None."""
        key = (hash_name, ver)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def add(self, ver: str, query: domish.Element, hash_name: str = "sha-1") -> bool:
        """Remember the disco#info ``query`` under ``ver``; False (nothing kept) when it does not verify."""
        if hash_name not in HASH_FUNCTIONS:
            return False
        try:
            identities, features, forms = parse_info(query)
        except InvalidCapsInfo:
            return False
        if verification_hash(identities, features, forms, hash_name) != ver:
            return False
        self._entries[(hash_name, ver)] = (frozenset(identities), frozenset(features))
        self._entries.move_to_end((hash_name, ver))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True
