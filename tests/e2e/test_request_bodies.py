"""Oversize request bodies over real HTTPS: refused while they arrive, never held whole by the web process."""

from __future__ import annotations

import json
import socket
import ssl

import requests

from hipchat_server.rest.body_limit import MAX_KEPT_BYTES
from tests.e2e.test_api_framework import assert_rate_headers
from tests.e2e.xmpp_client import PASSWORD

MIB = 1024 * 1024


def _chunks(total: int, size: int = MIB):
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def _url(config, path: str) -> str:
    return f"https://localhost:{config.http.https_port}{path}"


def test_an_announced_oversize_body_is_refused_before_it_is_sent(config):
    """Content-Length over the limit with Expect: 100-continue: the 413 comes at once, no body is read."""
    context = ssl.create_default_context(cafile=config.tls.ca_certificate)
    with socket.create_connection(("127.0.0.1", config.http.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /v2/room/1/notification HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (4 * MAX_KEPT_BYTES)
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"100 Continue" not in answer
    assert json.loads(body)["error"]["code"] == 413


def test_a_streamed_oversize_api_body_gets_the_apis_413_with_its_headers(config, new_user):
    """A chunked body (no length announced) growing past the limit is discarded as it comes; the API still answers in its format."""
    response = requests.post(
        _url(config, "/v2/room/1/notification"),
        data=_chunks(MAX_KEPT_BYTES + 4 * MIB),
        headers={"Content-Type": "application/json"},
        auth=(new_user(), PASSWORD),
        verify=config.tls.ca_certificate,
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == 413 and "not read" in response.json()["error"]["message"]
    assert_rate_headers(response)


def test_a_streamed_oversize_body_elsewhere_gets_a_plain_413(config):
    response = requests.post(_url(config, "/health"), data=_chunks(MAX_KEPT_BYTES + 2 * MIB), verify=config.tls.ca_certificate, timeout=60)
    assert response.status_code == 413
    assert "over" in response.text


def test_a_body_within_the_limit_reaches_the_resource(config, new_user):
    """Just under the web process's limit but over the API's 1 MiB: the API's own 413, so the body was kept and read."""
    response = requests.post(
        _url(config, "/v2/room/1/notification"),
        data=_chunks(2 * MIB),
        headers={"Content-Type": "application/json"},
        auth=(new_user(), PASSWORD),
        verify=config.tls.ca_certificate,
        timeout=60,
    )
    message = response.json()["error"]["message"]
    assert response.status_code == 413 and "1048576" in message and "not read" not in message
