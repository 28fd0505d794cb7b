"""Message Archive Management (XEP-0313, ``urn:xmpp:mam:2``) with Result Set Management (XEP-0059).

What a client can ask:

- ``<iq type='set'><query xmlns='urn:xmpp:mam:2' queryid=.../></iq>`` with no
  ``to`` (or to its own bare JID): its one-to-one archive; to a room's JID
  (through the rooms service, `MamService.room_query`): that room's archive,
  when the room is public and the user is not an outcast, or the user is a
  member of the private room (``forbidden`` otherwise). Another user's
  archive is ``forbidden``.
- A data form filters: ``with``, ``start``, ``end`` (XEP-0082 times,
  inclusive), ``after-id``/``before-id`` (exclusive) and ``ids`` (the
  ``#extended`` fields) and ``{urn:xmpp:fulltext:0}fulltext`` (XEP-0431: all
  the words, stemmed). Any other field is ``feature-not-implemented``; an id
  that is not in the archive is ``item-not-found``.
- RSM pages: ``<max/>`` (50 by default, at most 250: larger asks are
  served 250), ``<after>id</after>`` forwards, ``<before>id</before>``
  backwards and ``<before/>`` for the newest page; ``<max>0</max>`` only
  counts. ``<flip-page/>`` sends the page newest first.
- ``<iq type='get'><query/></iq>`` returns the form; ``<metadata/>`` the
  archive's first and last message.

Each message found goes to the requesting resource as
``<message><result queryid id><forwarded><delay stamp/>`` + the stanza as
its recipients got it; then the iq result carries ``<fin>`` with the page's
first and last id, the count, and ``complete='true'`` on the last page in the
direction of paging.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.history import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, HistoryError, Paging
from hipchat_server.xmpp.delay import DELAY_NS
from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, InvalidJID, parse_jid
from hipchat_server.xmpp.stanzas import iq_result
from hipchat_server.xmpp.websocket import with_content_namespace

MAM_NS = "urn:xmpp:mam:2"
#: before-id, after-id, ids, flipped pages and metadata (XEP-0313 section 7).
MAM_EXTENDED_FEATURE = "urn:xmpp:mam:2#extended"
FULLTEXT_NS = "urn:xmpp:fulltext:0"
#: XEP-0431's field, in Clark notation.
FULLTEXT_FIELD = "{urn:xmpp:fulltext:0}fulltext"
RSM_NS = "http://jabber.org/protocol/rsm"
DATA_FORMS_NS = "jabber:x:data"
FORWARD_NS = "urn:xmpp:forward:0"
VALIDATE_NS = "http://jabber.org/protocol/xdata-validate"
#: Longest fulltext search accepted (characters).
MAX_FULLTEXT_LENGTH = 500

_FIELD_TYPES = (
    ("with", "jid-single"),
    ("start", "text-single"),
    ("end", "text-single"),
    ("before-id", "text-single"),
    ("after-id", "text-single"),
    ("ids", "list-multi"),
    (FULLTEXT_FIELD, "text-single"),
)
_KNOWN_FIELDS = frozenset(["FORM_TYPE", *(name for name, _ in _FIELD_TYPES)])


class MamRequestError(Exception):
    """A query that cannot be run as sent; ``condition`` is the stanza error to answer with."""

    def __init__(self, condition: str, text: str):
        super().__init__(text)
        self.condition, self.text = condition, text


@dataclass(frozen=True)
class MamQuery:
    """A parsed ``<query xmlns='urn:xmpp:mam:2'/>``: its filters, its page and its delivery order."""

    queryid: str | None = None
    with_jid: JID | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    after_id: str | None = None
    before_id: str | None = None
    ids: tuple[str, ...] = ()
    fulltext: str | None = None
    paging: Paging = Paging()
    flip: bool = False


def parse_timestamp(value: str) -> int:
    """An XEP-0082 DateTime (``2010-06-07T00:00:00Z``, optional fraction and offset) as epoch milliseconds.

    ValueError when it is not one; a time without a zone is taken as UTC.
    """
    text = value.strip()
    if "T" not in text:
        raise ValueError(f"{value!r} is not an XEP-0082 date and time")
    moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return calendar.timegm(moment.utctimetuple()) * 1000 + moment.microsecond // 1000


def _child(element: domish.Element, uri: str, name: str) -> domish.Element | None:
    for child in element.elements():
        if child.uri == uri and child.name == name:
            return child
    return None


def _form_values(query: domish.Element) -> dict[str, list[str]]:
    """The submitted form's fields, each a list of its values; MamRequestError for a form we cannot take."""
    form = _child(query, DATA_FORMS_NS, "x")
    if form is None:
        return {}
    if form.getAttribute("type", "submit") != "submit":
        raise MamRequestError("bad-request", "the query form must be of type 'submit'")
    values: dict[str, list[str]] = {}
    for field in form.elements():
        if field.uri != DATA_FORMS_NS or field.name != "field":
            continue
        name = field.getAttribute("var")
        if name not in _KNOWN_FIELDS:
            raise MamRequestError("feature-not-implemented", f"this archive has no field {name!r}")
        values[name] = [str(v) for v in field.elements() if v.uri == DATA_FORMS_NS and v.name == "value"]
    form_type = values.pop("FORM_TYPE", [MAM_NS])
    if form_type != [MAM_NS]:
        raise MamRequestError("bad-request", f"FORM_TYPE must be {MAM_NS}")
    return values


def _single(values: dict[str, list[str]], name: str) -> str | None:
    found = [v.strip() for v in values.get(name, []) if v.strip()]
    if len(found) > 1:
        raise MamRequestError("bad-request", f"field {name!r} takes one value")
    return found[0] if found else None


def _time(values: dict[str, list[str]], name: str) -> int | None:
    text = _single(values, name)
    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise MamRequestError("bad-request", f"field {name!r}: {text!r} is not an XEP-0082 date and time") from None


def _paging(query: domish.Element) -> Paging:
    rsm = _child(query, RSM_NS, "set")
    if rsm is None:
        return Paging()
    if _child(rsm, RSM_NS, "index") is not None:
        raise MamRequestError("feature-not-implemented", "page with <after/> or <before/>, not <index/>")
    size = DEFAULT_PAGE_SIZE
    limit = _child(rsm, RSM_NS, "max")
    if limit is not None:
        text = str(limit).strip()
        if not text.isdigit():
            raise MamRequestError("bad-request", "<max/> must be a whole number")
        size = min(int(text), MAX_PAGE_SIZE)
    after, before = _child(rsm, RSM_NS, "after"), _child(rsm, RSM_NS, "before")
    after_id = str(after).strip() if after is not None else None
    if after is not None and not after_id:
        raise MamRequestError("bad-request", "<after/> needs the id to page after")
    before_id = str(before).strip() if before is not None else None
    return Paging(after=after_id, before=before_id, max=size)


def parse_query(query: domish.Element) -> MamQuery:
    """The query of an iq set; MamRequestError names what is wrong with it."""
    values = _form_values(query)
    with_text = _single(values, "with")
    try:
        with_jid = parse_jid(with_text) if with_text else None
    except InvalidJID as e:
        raise MamRequestError("jid-malformed", f"field 'with': {e}") from None
    fulltext = _single(values, FULLTEXT_FIELD)
    if fulltext is not None and len(fulltext) > MAX_FULLTEXT_LENGTH:
        raise MamRequestError("not-acceptable", f"a fulltext search may be at most {MAX_FULLTEXT_LENGTH} characters")
    ids = tuple(v.strip() for v in values.get("ids", []) if v.strip())
    if len(ids) > MAX_PAGE_SIZE:
        raise MamRequestError("policy-violation", f"ask for at most {MAX_PAGE_SIZE} ids at once")
    return MamQuery(
        queryid=query.getAttribute("queryid"),
        with_jid=with_jid,
        start_ms=_time(values, "start"),
        end_ms=_time(values, "end"),
        after_id=_single(values, "after-id"),
        before_id=_single(values, "before-id"),
        ids=ids,
        fulltext=fulltext,
        paging=_paging(query),
        flip=_child(query, MAM_NS, "flip-page") is not None,
    )


def query_form() -> domish.Element:
    """The answer to ``<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>``: the fields a query may use."""
    query = domish.Element((MAM_NS, "query"))
    form = query.addElement((DATA_FORMS_NS, "x"))
    form["type"] = "form"
    form_type = form.addElement("field")
    form_type["var"], form_type["type"] = "FORM_TYPE", "hidden"
    form_type.addElement("value", content=MAM_NS)
    for name, kind in _FIELD_TYPES:
        field = form.addElement("field")
        field["var"], field["type"] = name, kind
        if name == "ids":  # an open list: the archive does not enumerate its ids (XEP-0313 4.1.1.5)
            validate = field.addElement((VALIDATE_NS, "validate"))
            validate["datatype"] = "xs:string"
            validate.addElement("open")
    return query


def _attribute(value: str) -> str:
    return domish.escapeToXml(value, isattrib=1)


def result_message(to: str, archive: str | None, queryid: str | None, record: dict) -> str:
    """One ``<message><result/></message>`` of a query, as text (50 of these per page: no element tree).

    From the room for a room's archive; with no 'from' (the account itself,
    as XEP-0313's examples) for a user's, which also keeps the result out of
    offline storage should the session end before the client acknowledged it.
    """
    query_attribute = f" queryid='{_attribute(queryid)}'" if queryid is not None else ""
    from_attribute = f" from='{_attribute(archive)}'" if archive is not None else ""
    return (
        f"<message to='{_attribute(to)}'{from_attribute}>"
        f"<result xmlns='{MAM_NS}'{query_attribute} id='{_attribute(record['id'])}'>"
        f"<forwarded xmlns='{FORWARD_NS}'><delay xmlns='{DELAY_NS}' stamp='{_attribute(record['timestamp'])}'/>"
        f"{with_content_namespace(record['xml'])}</forwarded></result></message>"
    )


def fin_element(first: str | None, last: str | None, count: int | None, complete: bool) -> domish.Element:
    """The iq result's ``<fin/>``: the page's first and last id, the count, and whether it is the last page."""
    fin = domish.Element((MAM_NS, "fin"))
    if complete:
        fin["complete"] = "true"
    rsm = fin.addElement((RSM_NS, "set"))
    if first is not None:
        rsm.addElement("first", content=first)
        rsm.addElement("last", content=last)
    if count is not None:
        rsm.addElement("count", content=str(count))
    return fin


def metadata_element(oldest: dict | None, newest: dict | None) -> domish.Element:
    """``<metadata/>``: the first and last message of the archive (empty for an empty archive)."""
    metadata = domish.Element((MAM_NS, "metadata"))
    for name, record in (("start", oldest), ("end", newest)):
        if record is not None:
            edge = metadata.addElement(name)
            edge["id"], edge["timestamp"] = record["id"], record["timestamp"]
    return metadata


class MamService:
    """Answers MAM iqs for the router (a user's own archive) and for the rooms service (a room's).

    ``history`` is a `history.History`.
    """

    log = Logger()

    def __init__(self, history):
        self.history = history

    def register(self, router) -> None:
        """Have ``router`` hand this service every ``urn:xmpp:mam:2`` query and metadata iq to an account."""
        router.register_iq_handler(MAM_NS, "query", self.iq)
        router.register_iq_handler(MAM_NS, "metadata", self.iq)

    def iq(self, connection, iq: domish.Element, target: JID | None) -> defer.Deferred:
        """Answer a MAM iq to an account (the sender's own, or another's: forbidden); never fails."""
        own = connection.jid.bare()
        if target is not None and target.localpart is None:
            return self._answer_with(
                connection, iq, lambda: self._refuse("service-unavailable", "the server keeps no archive of its own")
            )
        return self._answer_with(
            connection, iq, lambda: self.history.user_archive(str(own), None if target is None else str(target.bare()))
        )

    def room_query(self, connection, iq: domish.Element, room_jid: str) -> defer.Deferred:
        """Answer a MAM iq addressed to a room (the rooms service calls this); never fails.

        The room's permission rule applies: forbidden to outcasts, and to
        non-members of a private room; item-not-found for no such room.
        """
        return self._answer_with(
            connection, iq, lambda: self.history.room_archive(str(connection.jid.bare()), room_jid)
        )

    def _refuse(self, condition: str, text: str):
        raise HistoryError(condition, text)

    def _answer_with(self, connection, iq: domish.Element, archive_of) -> defer.Deferred:
        d = defer.maybeDeferred(archive_of)
        d.addCallback(lambda archive: self._answer(connection, iq, archive))
        d.addErrback(self._refused, connection, iq)
        return d

    def _answer(self, connection, iq: domish.Element, archive):
        request = iq.firstChildElement()
        kind = iq.getAttribute("type")
        if request.name == "metadata" and kind == "get":
            return self._metadata(connection, iq, archive)
        if request.name == "query" and kind == "get":
            connection.deliver(iq_result(iq, query_form()))
            return None
        if request.name == "query" and kind == "set":
            return self._query(connection, iq, archive, parse_query(request))
        raise MamRequestError("bad-request", f"a <{request.name}/> is not sent as type '{kind}'")

    @defer.inlineCallbacks
    def _query(self, connection, iq: domish.Element, archive, query: MamQuery):
        with_jid = query.with_jid
        criteria = self.history.criteria(
            archive,
            with_bare=str(with_jid.bare()) if with_jid is not None else None,
            with_resource=with_jid.resourcepart if with_jid is not None else None,
            start_ms=query.start_ms,
            end_ms=query.end_ms,
            after_id=query.after_id,
            before_id=query.before_id,
            ids=query.ids,
            fulltext=query.fulltext,
        )
        page = yield self.history.query(criteria, query.paging)
        to = connection.jid.full()
        records = reversed(page.records) if query.flip else page.records
        archive_from = archive.jid if archive.room else None
        for record in records:
            connection.deliver(result_message(to, archive_from, query.queryid, record))
        connection.deliver(iq_result(iq, fin_element(page.first, page.last, page.count, page.complete)))

    @defer.inlineCallbacks
    def _metadata(self, connection, iq: domish.Element, archive):
        oldest, newest = yield self.history.edges(self.history.criteria(archive))
        connection.deliver(iq_result(iq, metadata_element(oldest, newest)))

    def _refused(self, failure, connection, iq: domish.Element) -> None:
        error = failure.value
        if isinstance(error, (HistoryError, MamRequestError)):
            connection.deliver(stanza_error_reply(iq, error.condition, text=error.text))
            return
        self.log.failure("answering a MAM query from {jid} failed", failure, jid=connection.jid)
        connection.deliver(stanza_error_reply(iq, "internal-server-error"))
