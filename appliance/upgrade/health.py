"""The health check an upgraded (or rolled back) appliance must pass.

Three checks, each a real use of the appliance: ``status`` (every part healthy, as
``hipchat-appliance status`` says, given up to ``settle`` seconds after a restart),
``xmpp-login`` (the administrator logs in over XMPP: TLS, SASL PLAIN, resource binding)
and ``rest`` (``GET /v2/capabilities`` through the HTTPS API).

Test hook: ``HIPCHAT_UPGRADE_FAIL_CHECK=<check name>`` makes that check fail, so the
tests can prove that a failed check rolls the upgrade back.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Callable

# Imported now, not when a check runs: an upgrade replaces these files on disk under us.
from appliance.lib.status import collect_status

FAIL_CHECK_VARIABLE = "HIPCHAT_UPGRADE_FAIL_CHECK"
CHECKS = ("status", "xmpp-login", "rest")
ADMIN_USERNAME = os.environ.get("HIPCHAT_UPGRADE_HEALTH_USER", "admin")
ADMIN_PASSWORD_FILE = "/etc/hipchat/secrets/admin_password"


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


def _status(chat_server) -> str:
    report = collect_status(chat_server)
    if not report.healthy:
        problems = [p for s in report.sections for p in s.problems]
        raise RuntimeError("; ".join(problems) or "unhealthy")
    return "every part healthy"


def _tls_context(config) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls.ca_certificate)
    context.check_hostname = False  # the certificate names the public host; we connect to loopback
    return context


def _xmpp_login(chat_server, timeout: float = 15.0) -> str:
    config = chat_server.get_config()
    domain = config.server.domain
    with open(ADMIN_PASSWORD_FILE) as f:
        password = f.read().strip()
    raw = socket.create_connection(("127.0.0.1", config.xmpp.c2s_tls_port), timeout=timeout)
    with _tls_context(config).wrap_socket(raw) as conn:
        buffer = b""

        def until(pattern: bytes) -> bytes:
            nonlocal buffer
            deadline = time.monotonic() + timeout
            while not re.search(pattern, buffer):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer matching {pattern!r} (got {buffer[-200:]!r})")
                chunk = conn.recv(65536)
                if not chunk:
                    raise RuntimeError(f"stream closed (got {buffer[-200:]!r})")
                buffer += chunk
            found, buffer = buffer, b""
            return found

        opening = f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        conn.sendall(opening.encode())
        until(rb"</stream:features>")
        token = base64.b64encode(f"\0{ADMIN_USERNAME}\0{password}".encode()).decode()
        conn.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        answer = until(rb"<success|<failure")
        if b"<failure" in answer:
            raise RuntimeError(f"SASL PLAIN refused for {ADMIN_USERNAME}")
        conn.sendall(opening.encode())
        until(rb"</stream:features>")
        resource = f"upgrade-check-{uuid.uuid4().hex[:6]}"
        conn.sendall(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>".encode())
        answer = until(rb"</iq>|<iq[^>]*/>")
        if b"type='result'" not in answer and b'type="result"' not in answer:
            raise RuntimeError(f"resource binding failed: {answer[:200]!r}")
        conn.sendall(b"</stream:stream>")
    return f"{ADMIN_USERNAME}@{domain} logged in and bound a resource"


def _rest(chat_server, timeout: float = 15.0) -> str:
    config = chat_server.get_config()
    url = f"https://127.0.0.1:{config.http.https_port}/v2/capabilities"
    with urllib.request.urlopen(url, context=_tls_context(config), timeout=timeout) as response:
        document = json.loads(response.read())
    if "capabilities" not in document:
        raise RuntimeError(f"{url} answered without capabilities")
    return f"GET /v2/capabilities: {response.status}"


_CHECKS: dict[str, Callable] = {"status": _status, "xmpp-login": _xmpp_login, "rest": _rest}


def check_health(chat_server, settle: float = 180.0, say: Callable[[str], None] = lambda s: None, sleep=time.sleep,
                 test_hook: bool = False) -> list[CheckResult]:
    """Run every check, each retried for up to ``settle`` seconds; returns one result per check.

    ``test_hook``: honour FAIL_CHECK_VARIABLE (the check after an upgrade does; the one after a
    rollback does not, so a test can see the rollback come back healthy).
    """
    failing = os.environ.get(FAIL_CHECK_VARIABLE, "") if test_hook else ""
    results = []
    for name in CHECKS:
        if name == failing:
            results.append(CheckResult(name, False, f"failed on purpose ({FAIL_CHECK_VARIABLE}={name})"))
            say(f"health check {name}: FAILED on purpose")
            continue
        deadline = time.monotonic() + settle
        while True:
            try:
                detail = _CHECKS[name](chat_server)
                results.append(CheckResult(name, True, detail))
                say(f"health check {name}: ok ({detail})")
                break
            except Exception as e:  # any failure is retried until the deadline, then reported
                if time.monotonic() > deadline:
                    results.append(CheckResult(name, False, str(e) or type(e).__name__))
                    say(f"health check {name}: FAILED ({e})")
                    break
                sleep(2)
    return results
