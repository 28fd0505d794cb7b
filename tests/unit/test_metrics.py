"""The ``/metrics`` resource's access rule and the request counting of `metrics.MeasuredSite`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from hipchat_server import metrics
from hipchat_server.authentication import AuthenticationFailed, Caller


class Callers:
    """``admin_caller`` stand-in: one admin token, one ordinary user's token."""

    def __call__(self, authorization: str):
        if authorization == "Bearer admin-token":
            return Caller("admin", 1, frozenset(), "user:admin", is_admin=True)
        if authorization == "Bearer user-token":
            return Caller("someone", 2, frozenset(), "user:someone")
        raise AuthenticationFailed("unknown token")


def registry():
    r = CollectorRegistry()
    Counter("hipchat_test_things", "things", registry=r).inc(3)
    return r


def request_from(host: str, authorization: str | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", host, 40000)
    if authorization:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization.encode()])
    return request


def resource_over(callers) -> metrics.MetricsResource:
    """The resource with the token check run inline instead of in a thread."""
    return metrics.MetricsResource(callers, registry(), run_blocking=lambda f, *a: defer.maybeDeferred(f, *a))


def served(resource, request):
    """Render ``request``; answer (status code, body)."""
    body = resource.render_GET(request)
    if not isinstance(body, bytes):
        body = b"".join(request.written)
    return request.responseCode or 200, body


def test_loopback_needs_no_token():
    """A scrape from 127.0.0.1 gets the figures without credentials."""
    code, body = served(resource_over(Callers()), request_from("127.0.0.1"))
    assert code == 200 and b"hipchat_test_things_total 3.0" in body


def test_another_address_needs_an_admin_token():
    """From elsewhere: no token 401, an ordinary user's token 403, an unknown one 401, an admin's 200."""
    resource = resource_over(Callers())
    assert served(resource, request_from("192.0.2.7"))[0] == 401
    assert served(resource, request_from("192.0.2.7", "Bearer user-token"))[0] == 403
    assert served(resource, request_from("192.0.2.7", "Bearer forged"))[0] == 401
    code, body = served(resource, request_from("192.0.2.7", "Bearer admin-token"))
    assert code == 200 and b"hipchat_test_things_total 3.0" in body


def test_requests_are_counted_by_area():
    """The first path segment names the area; the web client and its files are 'web'."""
    assert metrics.area_of(b"/v2/room?max-results=5") == "api"
    assert metrics.area_of(b"/admin/users") == "admin"
    assert metrics.area_of(b"/") == "web"
    assert metrics.area_of(b"/webclient/14.0.0/converse.min.js") == "web"
    assert metrics.area_of(b"/xmpp-websocket") == "websocket"


def test_process_number_from_supervisor(monkeypatch):
    """xmpp-1 and worker-1 take their base port + 1; an unnumbered program + 0."""
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "xmpp-1")
    assert metrics.process_number() == 1
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "indexer")
    assert metrics.process_number() == 0
