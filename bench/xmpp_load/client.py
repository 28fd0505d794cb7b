"""One simulated XMPP client: raw XMPP over TLS on asyncio, as small as it can be.

A client logs in (STARTTLS or direct TLS, SASL SCRAM or PLAIN, resource binding, optionally
XEP-0198 stream management, initial presence), then sends and receives chat messages whose body
is ``<sender> <seq> <send time ns>`` so the receiver can check each one arrived exactly once and
how long it took. Everything it counts goes to the `Tally` of its worker process.

In a room (XEP-0045: `join_room`) every occupant receives every message, so each client keeps
its own count per (sender, seq) in `room_seen` (one byte per message) and the tally only sums
deliveries and duplicates. `expect` waits for one stanza matching a predicate (a join's
self-presence, an iq result); scenarios outside this package (bench/history_search.py) use it too.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

from .scram import ScramClient
from .splitter import ELEMENT, STREAM_END, STREAM_START, StanzaSplitter, attributes, element_name, escape, text_of

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
SM_NS = "urn:xmpp:sm:3"
_MECHANISM = re.compile(rb"<mechanism>([^<]+)</mechanism>")
_BODY = re.compile(rb"<body>(\d+) (\d+) (\d+)</body>")
# How soon to ask again for an ack while messages are unacked. Every message carries its own <r/>;
# a server that answers <r/> only once what preceded it is durable (ours) never needs the re-ask,
# one that answers at once with what it has so far (Prosody, ejabberd) does.
ACK_POLL_S = 0.02
_ID = re.compile(rb"m(\d+)-(\d+)$")  # searched: the id may carry a run tag before the "m"
_STANZA_ID = re.compile(rb"<stanza-id\s[^>]*>")
MUC_NS = "http://jabber.org/protocol/muc"
_STANZAS = (b"message", b"presence", b"iq")


class LoginError(Exception):
    """A login step failed; ``kind`` is a short reason for the failure counts."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 5222
    domain: str = "localhost"
    direct_tls: bool = False
    ca_file: str | None = None
    verify: bool = True
    mechanism: str = "auto"  # auto: SCRAM-SHA-256, else SCRAM-SHA-1, else PLAIN
    password: str = ""
    stream_management: bool = True
    request_acks: bool = True
    login_timeout: float = 60.0
    id_prefix: str = ""  # put before every message id ("<prefix>m<sender>-<seq>"), to tell runs apart

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file) if self.verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass
class Tally:
    """What the clients of one worker counted."""

    received: dict = field(default_factory=dict)  # sender -> {seq: times received}
    latencies_ms: list = field(default_factory=list)
    ack_ms: list = field(default_factory=list)
    bounced: dict = field(default_factory=dict)  # sender -> set of seqs bounced
    errors_without_body: int = 0  # error bounces that did not quote the message
    received_since: int = 0  # only messages sent at or after this monotonic ns are counted
    mechanisms: set = field(default_factory=set)
    sm_offered: set = field(default_factory=set)
    room_deliveries: int = 0  # groupchat messages received, once per (receiver, sender, seq)
    room_duplicates: int = 0  # ... received again by the same receiver
    sample_every: int = 0  # record the stanza-id of messages whose seq is a multiple of this (0: none)
    samples: list = field(default_factory=list)  # (stanza-id, sender, seq, send time ns, receive time ns)

    def reset(self, since_ns: int = 0) -> None:
        self.received, self.latencies_ms, self.ack_ms, self.bounced = {}, [], [], {}
        self.errors_without_body = 0
        self.received_since = since_ns
        self.room_deliveries = self.room_duplicates = 0


class Client(asyncio.Protocol):
    """The connection of one user; ``await login()`` then ``send_chat()``."""

    __slots__ = (
        "index", "username", "resource", "options", "tally", "transport", "splitter", "_pending", "_waiter",
        "bound", "closed", "sm", "in_count", "out_count", "unacked", "_poll_pending", "seq", "peer", "sender_id",
        "room", "room_seen", "_watchers",
    )

    def __init__(self, index: int, username: str, options: Options, tally: Tally):
        self.index, self.username, self.options, self.tally = index, username, options, tally
        self.sender_id = index
        self.resource = f"bench{index}"
        self.transport = None
        self.splitter = StanzaSplitter()
        self._pending: deque = deque()
        self._waiter: asyncio.Future | None = None
        self.bound = self.closed = self.sm = False
        self.in_count = self.out_count = 0
        self.unacked: deque = deque()  # (out_count of the message, send time ns)
        self._poll_pending = False  # a re-ask for an ack is scheduled
        self.seq = 0  # messages this client sent, over all its connections
        self.peer: str | None = None  # the bare JID this client chats with
        self.room: str | None = None  # the room JID this client is an occupant of
        self.room_seen: dict[int, bytearray] = {}  # sender -> times each seq was received (in the room)
        self._watchers: list = []  # (predicate(element) -> bool, future): `expect`

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for kind, element in self.splitter.feed(data):
            if self.bound and kind == ELEMENT:
                self._handle(element)
            else:
                self._pending.append((kind, element))
        if self._pending and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc) -> None:
        self.closed, self.bound = True, False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        for _, future in self._watchers:
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self._watchers = []

    def abort(self) -> None:
        """Drop the TCP connection at once (RST), as a phone losing its network does."""
        if self.transport is not None:
            self.transport.abort()
        self.bound = False

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(b"</stream:stream>")
            except Exception:
                pass
            self.transport.close()
        self.bound = False

    # Negotiation.
    async def _next(self) -> tuple[str, bytes]:
        while not self._pending:
            if self.closed:
                raise LoginError("connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        kind, element = self._pending.popleft()
        if kind == STREAM_END:
            raise LoginError("stream closed by server")
        if kind == ELEMENT and element_name(element) == b"stream:error":
            raise LoginError("stream error", element[:200].decode(errors="replace"))
        return kind, element

    async def _element(self) -> bytes:
        kind, element = await self._next()
        while kind != ELEMENT:
            kind, element = await self._next()
        return element

    async def _open_stream(self) -> bytes:
        self.splitter.reset()
        self._pending.clear()
        self.transport.write(
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
            f" to='{self.options.domain}' version='1.0'>".encode()
        )
        kind, _ = await self._next()
        if kind != STREAM_START:
            raise LoginError("no stream header")
        features = await self._element()
        if element_name(features) != b"stream:features":
            raise LoginError("no stream features")
        return features

    async def login(self, context: ssl.SSLContext) -> None:
        """Connect and log in; raises LoginError or OSError. ``asyncio.wait_for`` it for a timeout."""
        loop = asyncio.get_running_loop()
        options = self.options
        self.splitter, self._pending, self.closed, self.bound, self.sm = StanzaSplitter(), deque(), False, False, False
        self.in_count = self.out_count = 0
        self.unacked.clear()
        if options.direct_tls:
            await loop.create_connection(lambda: self, options.host, options.port, ssl=context, server_hostname=options.domain)
        else:
            await loop.create_connection(lambda: self, options.host, options.port)
        features = await self._open_stream()
        if not options.direct_tls:
            if b"<starttls" not in features:
                raise LoginError("no starttls offered")
            self.transport.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            if element_name(await self._element()) != b"proceed":
                raise LoginError("starttls refused")
            self.transport = await loop.start_tls(self.transport, self, context, server_hostname=options.domain)
            features = await self._open_stream()
        await self._authenticate(features)
        features = await self._open_stream()
        sm_offered = f"xmlns='{SM_NS}'".encode() in features or f'xmlns="{SM_NS}"'.encode() in features
        self.tally.sm_offered.add(sm_offered)
        self.transport.write(
            f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{self.resource}"
            f"</resource></bind></iq>".encode()
        )
        reply = await self._element()
        if element_name(reply) != b"iq" or attributes(reply).get(b"type") != b"result":
            raise LoginError("bind failed", reply[:200].decode(errors="replace"))
        if options.stream_management and sm_offered:
            self.transport.write(f"<enable xmlns='{SM_NS}'/>".encode())
            answer = await self._element()
            self.sm = element_name(answer) == b"enabled"
        self.bound = True
        for kind, element in list(self._pending):  # anything that came right after negotiation
            if kind == ELEMENT:
                self._handle(element)
        self._pending.clear()
        self._write_stanza(b"<presence/>")

    async def _authenticate(self, features: bytes) -> None:
        offered = [m.decode() for m in _MECHANISM.findall(features)]
        wanted = self.options.mechanism
        if wanted == "auto":
            choices = [m for m in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN") if m in offered]
            if not choices:
                raise LoginError("no usable SASL mechanism", ",".join(offered))
            wanted = choices[0]
        elif wanted not in offered:
            raise LoginError(f"{wanted} not offered", ",".join(offered))
        self.tally.mechanisms.add(wanted)
        if wanted == "PLAIN":
            payload = base64.b64encode(f"\0{self.username}\0{self.options.password}".encode()).decode()
            self.transport.write(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{payload}</auth>".encode())
            answer = await self._element()
            if element_name(answer) != b"success":
                raise LoginError("auth failed", answer[:200].decode(errors="replace"))
            return
        scram = ScramClient(wanted, self.username, self.options.password)
        first = base64.b64encode(scram.first()).decode()
        self.transport.write(f"<auth xmlns='{SASL_NS}' mechanism='{wanted}'>{first}</auth>".encode())
        challenge = await self._element()
        if element_name(challenge) != b"challenge":
            raise LoginError("auth failed", challenge[:200].decode(errors="replace"))
        final = scram.final(base64.b64decode(text_of(challenge)))
        self.transport.write(f"<response xmlns='{SASL_NS}'>{base64.b64encode(final).decode()}</response>".encode())
        answer = await self._element()
        if element_name(answer) != b"success":
            raise LoginError("auth failed", answer[:200].decode(errors="replace"))
        scram.verify(base64.b64decode(text_of(answer)))

    # Sending.
    def _write_stanza(self, data: bytes, seq: int = 0) -> None:
        self.out_count += 1
        if self.sm and self.options.request_acks and data.startswith(b"<message"):
            self.unacked.append((self.out_count, time.monotonic_ns(), seq))
            data += b"<r xmlns='urn:xmpp:sm:3'/>"
        self.transport.write(data)

    def send(self, data: bytes) -> None:
        """Write one stanza (counted for XEP-0198; a message also asks for an ack)."""
        self._write_stanza(data)

    def send_chat(self, to: str, kind: str = "chat") -> bool:
        """Send the next numbered message to ``to`` (``kind`` chat or groupchat); False when not connected."""
        if not self.bound or self.closed:
            return False
        self.seq += 1
        self._write_stanza(
            f"<message to='{escape(to)}' type='{kind}' id='{self.options.id_prefix}m{self.sender_id}-{self.seq}'>"
            f"<body>{self.sender_id} {self.seq} {time.monotonic_ns()}</body></message>".encode(),
            self.seq,
        )
        return True

    def expect(self, predicate) -> asyncio.Future:
        """A future for the next stanza ``predicate(element)`` accepts (checked before normal handling)."""
        future = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionError("connection closed"))
        else:
            self._watchers.append((predicate, future))
        return future

    async def join_room(self, room: str, nick: str, maxstanzas: int = 0, timeout: float = 30.0) -> dict:
        """Enter ``room`` as ``nick`` (XEP-0045 7.2) and wait for the self-presence (status 110).

        A room this join created (status 201) is made an instant room: its owner submits an
        empty configuration form (10.1.2). Returns ``{"created", "seconds"}``; raises LoginError
        (kind "join refused" / "join timeout" / "configure refused") when it fails.
        """
        full = f"{room}/{nick}".encode()
        quoted = escape(f"{room}/{nick}").encode()

        def self_presence(element: bytes) -> bool:
            if element_name(element) != b"presence":
                return False
            frm = attributes(element).get(b"from")
            if frm not in (full, quoted):
                return False
            return attributes(element).get(b"type") == b"error" or _has_status(element, b"110")

        started = time.monotonic()
        waiting = self.expect(self_presence)
        history = f"<history maxstanzas='{maxstanzas}'/>" if maxstanzas is not None else ""
        self.send(f"<presence to='{escape(room)}/{escape(nick)}'><x xmlns='{MUC_NS}'>{history}</x></presence>".encode())
        try:
            answer = await asyncio.wait_for(waiting, timeout)
        except asyncio.TimeoutError:
            raise LoginError("join timeout") from None
        if attributes(answer).get(b"type") == b"error":
            raise LoginError("join refused", answer[:300].decode(errors="replace"))
        created = _has_status(answer, b"201")
        if created:
            iq_id = f"cfg-{self.index}"
            done = self.expect(lambda e: element_name(e) == b"iq" and attributes(e).get(b"id") == iq_id.encode())
            self.send(
                f"<iq type='set' to='{escape(room)}' id='{iq_id}'><query xmlns='{MUC_NS}#owner'>"
                f"<x xmlns='jabber:x:data' type='submit'/></query></iq>".encode()
            )
            try:
                reply = await asyncio.wait_for(done, timeout)
            except asyncio.TimeoutError:
                raise LoginError("configure timeout") from None
            if attributes(reply).get(b"type") != b"result":
                raise LoginError("configure refused", reply[:300].decode(errors="replace"))
        self.room = room
        return {"created": created, "seconds": time.monotonic() - started}

    # Receiving.
    def _handle(self, element: bytes) -> None:
        if self._watchers:
            self._notify(element)
        name = element_name(element)
        if name in _STANZAS:
            self.in_count += 1
            if name == b"message":
                self._message(element)
            elif name == b"iq" and attributes(element).get(b"type") == b"get":
                self._answer_iq(element)
        elif name == b"r":
            self.transport.write(f"<a xmlns='{SM_NS}' h='{self.in_count}'/>".encode())
        elif name == b"a":
            self._acked(int(attributes(element).get(b"h", b"0")))

    def _notify(self, element: bytes) -> None:
        keep = []
        for predicate, future in self._watchers:
            if future.done():
                continue
            if predicate(element):
                future.set_result(element)
            else:
                keep.append((predicate, future))
        self._watchers = keep

    def _message(self, element: bytes) -> None:
        match = _BODY.search(element)
        if match is None:
            if attributes(element).get(b"type") == b"error":  # a bounce that does not quote the body
                quoted = _ID.search(attributes(element).get(b"id", b""))
                if quoted:
                    self.tally.bounced.setdefault(int(quoted.group(1)), set()).add(int(quoted.group(2)))
                else:
                    self.tally.errors_without_body += 1
            return
        sender, seq, sent_ns = int(match.group(1)), int(match.group(2)), int(match.group(3))
        tally = self.tally
        if sent_ns < tally.received_since:
            return
        kind = attributes(element).get(b"type")
        if kind == b"error":
            tally.bounced.setdefault(sender, set()).add(seq)
            return
        now = time.monotonic_ns()
        if kind == b"groupchat":
            seen = self.room_seen.get(sender)
            if seen is None:
                seen = self.room_seen[sender] = bytearray(max(256, 2 * seq))
            elif seq >= len(seen):
                seen.extend(bytes(max(len(seen), seq + 1 - len(seen))))
            if seen[seq]:
                tally.room_duplicates += 1
                if seen[seq] < 255:
                    seen[seq] += 1
                return
            seen[seq] = 1
            tally.room_deliveries += 1
        else:
            seen = tally.received.setdefault(sender, {})
            seen[seq] = seen.get(seq, 0) + 1
        tally.latencies_ms.append((now - sent_ns) / 1e6)
        if tally.sample_every and seq % tally.sample_every == 0:
            tag = _STANZA_ID.search(element)
            if tag is not None:
                stanza_id = attributes(tag.group(0)).get(b"id")
                if stanza_id:
                    tally.samples.append((stanza_id.decode(), sender, seq, sent_ns, now))

    def unacked_seqs(self) -> list[int]:
        """Sequence numbers of the messages the server has not acknowledged yet."""
        return [seq for _, _, seq in self.unacked if seq]

    def _answer_iq(self, element: bytes) -> None:
        attrs = attributes(element)
        reply = b"<iq type='error' id='" + attrs.get(b"id", b"") + b"'"
        if b"from" in attrs:
            reply += b" to='" + attrs[b"from"] + b"'"
        self.transport.write(reply + b"><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        self.out_count += 1

    def _acked(self, h: int) -> None:
        now, unacked, ack_ms = time.monotonic_ns(), self.unacked, self.tally.ack_ms
        while unacked and unacked[0][0] <= h:
            ack_ms.append((now - unacked.popleft()[1]) / 1e6)
        if unacked and not self._poll_pending:
            # Some servers answer <r/> with what is durable so far and never say when the rest
            # is: ask again shortly, so an ack's latency is known to within this delay.
            self._poll_pending = True
            asyncio.get_running_loop().call_later(ACK_POLL_S, self._request_ack)

    def _request_ack(self) -> None:
        self._poll_pending = False
        if self.bound and not self.closed and self.unacked:
            self.transport.write(f"<r xmlns='{SM_NS}'/>".encode())


def _has_status(presence: bytes, code: bytes) -> bool:
    """Whether a MUC presence carries ``<status code='<code>'/>``."""
    return b"code='" + code + b"'" in presence or b'code="' + code + b'"' in presence
