"""SASL authentication of a client stream (RFC 6120 section 6), without networking.

Mechanisms: SCRAM-SHA-256 (RFC 7677) and SCRAM-SHA-1 (RFC 5802) through
scramp, checked against stored keys so the server never sees a password, and
PLAIN (RFC 4616), offered only on an encrypted stream.

Channel binding: no -PLUS variant is offered yet. scramp can bind to
``tls-server-end-point`` or ``tls-unique``, but the second is undefined for
TLS 1.3 and ``tls-exporter`` (the one RFC 9266 asks for) scramp does not
support; until then a client that asks for binding ("p=" in its GS2 header)
gets malformed-request, and one that says it could bind ("y") is accepted.

The protocol layer owns the XML. It gives a ``SaslSession`` the mechanism
name and the base64 text of ``<auth/>`` and ``<response/>``, and sends what
the session returns: a ``Challenge`` as ``<challenge/>``, a ``Success`` as
``<success/>``, a ``Failure`` as ``<failure/>`` with its condition. Looking
up credentials may block (MariaDB, argon2), so the protocol layer calls
``start`` and ``respond`` from a thread; this module knows nothing of Twisted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import Protocol, Union

from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError

from hipchat_server.users import SCRAM_ITERATIONS, SCRAM_MECHANISMS, ScramCredentials

log = logging.getLogger(__name__)

PLAIN = "PLAIN"

# RFC 6120 section 6.5: the failure conditions this module returns.
ABORTED = "aborted"
ACCOUNT_DISABLED = "account-disabled"
ENCRYPTION_REQUIRED = "encryption-required"
INCORRECT_ENCODING = "incorrect-encoding"
INVALID_AUTHZID = "invalid-authzid"
INVALID_MECHANISM = "invalid-mechanism"
MALFORMED_REQUEST = "malformed-request"
NOT_AUTHORIZED = "not-authorized"
TEMPORARY_AUTH_FAILURE = "temporary-auth-failure"


def _encode(data: bytes | None) -> str:
    """The base64 text of SASL data for an XML element; empty for none."""
    return base64.b64encode(data).decode("ascii") if data else ""


@dataclass(frozen=True)
class Challenge:
    """Send ``<challenge>`` with ``data``; wait for ``<response/>``."""

    data: bytes

    def encoded(self) -> str:
        return _encode(self.data)


@dataclass(frozen=True)
class Success:
    """Send ``<success>`` (with ``data``, SCRAM's server signature, when there is some); ``username`` logged in."""

    username: str
    data: bytes | None = None

    def encoded(self) -> str:
        return _encode(self.data)


@dataclass(frozen=True)
class Failure:
    """Send ``<failure>`` with ``condition`` (and ``text`` as ``<text/>`` when set); the client may try again.

    ``credentials_proved``: the password was right and the login is refused for
    another reason (a policy), so it is no guess to count against the address.
    """

    condition: str
    text: str | None = None
    credentials_proved: bool = False


Outcome = Union[Challenge, Success, Failure]


class SaslStateError(RuntimeError):
    """The protocol layer used a session after it succeeded (it must restart the stream instead)."""


class CredentialsStore(Protocol):
    """What SASL needs to know about users (``hipchat_server.users.UserCredentials`` over MariaDB).

    Usernames passed in are the lowercased localpart the client sent. Methods may block.
    """

    def get_scram_credentials(self, username: str, mechanism: str) -> ScramCredentials | None:
        """The user's stored keys for ``mechanism``; None when there is no such user or no such keys."""

    def check_password(self, username: str, password: str) -> bool:
        """True when the user exists and ``password`` is theirs."""

    def is_active(self, username: str) -> bool:
        """True when the user may log in (not disabled, not deleted)."""


def _decode(text: str | bytes) -> bytes:
    """Base64 text from an XML element to bytes ("=" is zero-length data); raises ValueError."""
    if isinstance(text, bytes):
        text = text.decode("ascii")  # UnicodeDecodeError is a ValueError
    text = text.strip()
    if text == "=":
        return b""
    return base64.b64decode(text, validate=True)  # binascii.Error is a ValueError


class SaslServer:
    """The mechanisms one XMPP domain offers, and sessions that run them.

    ``fake_salt_secret`` makes the salt answered for an unknown user stable
    (so a probe cannot tell unknown from known by a changing salt); front
    ends of one appliance should share it. A random one is made otherwise.
    """

    def __init__(self, credentials: CredentialsStore, domain: str, fake_salt_secret: bytes | None = None):
        self.credentials = credentials
        self.domain = domain
        self.fake_salt_secret = fake_salt_secret or os.urandom(32)

    def mechanisms(self, tls_active: bool) -> list[str]:
        """The mechanisms to advertise, strongest first; PLAIN only when the stream is encrypted."""
        return [*SCRAM_MECHANISMS, PLAIN] if tls_active else list(SCRAM_MECHANISMS)

    def session(self, tls_active: bool) -> "SaslSession":
        return SaslSession(self, tls_active)

    def fake_scram_credentials(self, username: str, mechanism: str) -> ScramCredentials:
        """Credentials of a user that does not exist: a stable salt, keys no proof can match."""
        salt = hmac.new(self.fake_salt_secret, f"{mechanism}\0{username}".encode(), hashlib.sha256).digest()
        return ScramCredentials(mechanism, salt, SCRAM_ITERATIONS[mechanism], os.urandom(32), os.urandom(32))


class _PlainExchange:
    """RFC 4616: one message, ``authzid NUL authcid NUL password``."""

    def __init__(self, server: SaslServer):
        self.server = server

    def step(self, data: bytes) -> Outcome:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure(MALFORMED_REQUEST, "PLAIN expects authzid, authcid and password separated by NUL")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return Failure(MALFORMED_REQUEST, "PLAIN data is not UTF-8")
        if not authcid or not password:
            return Failure(NOT_AUTHORIZED)
        username = authcid.lower()
        if not self.server.credentials.check_password(username, password):
            return Failure(NOT_AUTHORIZED)
        if authzid and authzid.lower() not in (username, f"{username}@{self.server.domain}"):
            return Failure(INVALID_AUTHZID, "a user may only log in as themselves")
        if not self.server.credentials.is_active(username):
            return Failure(ACCOUNT_DISABLED)
        return Success(username)


# scramp's errors that mean the client is not who it claims, or that we could not look it up;
# every other one is a message we cannot parse or a feature (channel binding) we do not offer.
_SCRAM_CONDITIONS = {
    ServerError.INVALID_PROOF: NOT_AUTHORIZED,
    ServerError.UNKNOWN_USER: NOT_AUTHORIZED,
    ServerError.NO_RESOURCES: TEMPORARY_AUTH_FAILURE,
}


class _ScramExchange:
    """RFC 5802: client-first -> server-first challenge; client-final -> success with the server signature."""

    def __init__(self, server: SaslServer, mechanism: str):
        self.server = server
        self.mechanism = mechanism
        self.scram = ScramMechanism(mechanism).make_server(self._lookup)
        self.username: str | None = None
        self.known_user = False
        self.step = self._client_first

    def _lookup(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        # scramp calls this with the SASLprepped, unescaped username of client-first.
        self.username = name.lower()
        try:
            stored = self.server.credentials.get_scram_credentials(self.username, self.mechanism)
        except Exception:
            log.exception("looking up %s credentials of %s failed", self.mechanism, self.username)
            raise  # scramp turns it into no-resources: temporary-auth-failure
        self.known_user = stored is not None
        if stored is None:
            # Go on as if the user existed and fail at the proof (RFC 5802 section 5.1),
            # so an unknown username and a wrong password look the same.
            stored = self.server.fake_scram_credentials(self.username, self.mechanism)
        return stored.salt, stored.stored_key, stored.server_key, stored.iterations

    def _failure(self, e: ScramException) -> Failure:
        condition = _SCRAM_CONDITIONS.get(e.server_error, MALFORMED_REQUEST)
        return Failure(condition, None if condition == NOT_AUTHORIZED else e.args[0])

    def _client_first(self, data: bytes) -> Outcome:
        try:
            message = data.decode("utf-8")
        except UnicodeDecodeError:
            return Failure(MALFORMED_REQUEST, "SCRAM client-first message is not UTF-8")
        gs2_header = message.split(",", 2)
        if len(gs2_header) == 3 and gs2_header[1]:
            # scramp cannot verify an authorization identity; RFC 6120 lets the client omit it.
            return Failure(INVALID_AUTHZID, "log in without an authorization identity")
        try:
            self.scram.set_client_first(message)
            server_first = self.scram.get_server_first()
        except ScramException as e:
            return self._failure(e)
        self.step = self._client_final
        return Challenge(server_first.encode("utf-8"))

    def _client_final(self, data: bytes) -> Outcome:
        try:
            self.scram.set_client_final(data.decode("utf-8"))
            server_final = self.scram.get_server_final()
        except UnicodeDecodeError:
            return Failure(MALFORMED_REQUEST, "SCRAM client-final message is not UTF-8")
        except ScramException as e:
            return self._failure(e)
        if not self.known_user:  # unreachable with random keys, but never let a fake user in
            return Failure(NOT_AUTHORIZED)
        # Only a client that proved the password learns that the account is disabled.
        if not self.server.credentials.is_active(self.username):
            return Failure(ACCOUNT_DISABLED)
        return Success(self.username, server_final.encode("utf-8"))


class SaslSession:
    """One stream's authentication: ``start``, then ``respond`` to each challenge, until Success or Failure.

    After a Failure the client may ``start`` again (the protocol layer limits
    how often, counting ``failures``); after a Success the session is done.
    Use one session from one thread at a time.
    """

    def __init__(self, server: SaslServer, tls_active: bool):
        self.server = server
        self.tls_active = tls_active
        self.username: str | None = None
        self.failures = 0
        self._exchange: _PlainExchange | _ScramExchange | None = None

    @property
    def in_progress(self) -> bool:
        return self._exchange is not None

    @property
    def succeeded(self) -> bool:
        return self.username is not None

    def _check_not_done(self) -> None:
        if self.succeeded:
            raise SaslStateError("authentication already succeeded; restart the stream")

    def _fail(self, condition: str, text: str | None = None) -> Failure:
        self._exchange = None
        self.failures += 1
        return Failure(condition, text)

    def _step(self, data: bytes) -> Outcome:
        outcome = self._exchange.step(data)
        if isinstance(outcome, Failure):
            return self._fail(outcome.condition, outcome.text)
        if isinstance(outcome, Success):
            self._exchange = None
            self.username = outcome.username
        return outcome

    def start(self, mechanism: str, initial_response: str | bytes | None) -> Outcome:
        """Begin ``mechanism`` (the ``<auth/>`` element); ``initial_response`` is its base64 text.

        None or empty text means the client sent no initial response (it gets
        an empty challenge); "=" means an empty one. A start during an exchange
        abandons that exchange.
        """
        self._check_not_done()
        self._exchange = None
        if mechanism in SCRAM_MECHANISMS:
            exchange = _ScramExchange(self.server, mechanism)
        elif mechanism == PLAIN:
            if not self.tls_active:
                return self._fail(ENCRYPTION_REQUIRED, "PLAIN needs an encrypted stream")
            exchange = _PlainExchange(self.server)
        else:
            return self._fail(INVALID_MECHANISM)
        if initial_response is None or not initial_response.strip():
            self._exchange = exchange
            return Challenge(b"")
        try:
            data = _decode(initial_response)
        except ValueError:
            return self._fail(INCORRECT_ENCODING)
        self._exchange = exchange
        return self._step(data)

    def respond(self, response: str | bytes) -> Outcome:
        """Continue the exchange with a ``<response/>`` element's base64 text."""
        self._check_not_done()
        if self._exchange is None:
            return self._fail(MALFORMED_REQUEST, "no authentication in progress")
        try:
            data = _decode(response)
        except ValueError:
            return self._fail(INCORRECT_ENCODING)
        return self._step(data)

    def abort(self) -> Failure:
        """The client sent ``<abort/>``: drop the exchange."""
        self._check_not_done()
        return self._fail(ABORTED)
