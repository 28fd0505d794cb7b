"""Web client first load to chat-ready on loopback, in headless Chromium (Playwright, Debian's chromium).

Each run opens a fresh browser profile (an empty cache, like a first visit)
and measures, from the navigation to ``https://127.0.0.1/``:

- ``login form``: Converse.js loaded, started, and its login form shown;
- ``chat-ready``: after submitting the form, the roster shown (the XMPP login
  over WebSocket, roster and rooms fetched), counted from the submit;
- ``total``: navigation to chat-ready, typing excluded.

A second visit in the same profile (``warm``) shows what the browser's cache of
the versioned Converse.js files saves. Each visit logs in as its own user
``bench-webclient-<n>`` (created once, left in place): a closed browser's
session waits 5 minutes to be resumed (Stream Management), and one user may
hold only ``xmpp.max_sessions_per_user`` at once.

    /opt/hipchat/venv/bin/python bench/web_client.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

USERNAME = "bench-webclient"
PASSWORD = "bench-webclient-password"
URL = "https://127.0.0.1/"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def ensure_users(count: int) -> list[str]:
    names = [f"{USERNAME}-{n}" for n in range(count)]
    with tempfile.NamedTemporaryFile("w", suffix=".pw") as f:
        f.write(PASSWORD + "\n")
        f.flush()
        for name in names:
            subprocess.run(
                ["/opt/hipchat/venv/bin/hipchat-appliance", "user", "add", name, "--name", "Bench web client",
                 "--email", f"{name}@bench.example.com", "--password-file", f.name],
                capture_output=True, text=True,
            )  # "taken" on later runs is fine
    return names


def one_visit(page, username: str) -> dict:
    started = time.perf_counter()
    page.goto(URL)
    page.wait_for_selector("#converse-login-jid")
    form = time.perf_counter() - started
    page.fill("#converse-login-jid", username)
    page.fill("#converse-login-password", PASSWORD)
    page.uncheck("#converse-login-trusted")  # nothing kept but the HTTP cache: the next tab logs in anew
    submitted = time.perf_counter()
    page.click("converse-login-form [type=submit]")
    page.wait_for_selector("converse-roster")
    ready = time.perf_counter() - submitted
    return {"login_form_ms": form * 1000, "chat_ready_ms": ready * 1000, "total_ms": (form + ready) * 1000}


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered)),
        "p95": round(ordered[max(0, int(round(0.95 * len(ordered))) - 1)]),
        "max": round(ordered[-1]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    users = iter(ensure_users(2 * args.runs))
    cold, warm = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        for _ in range(args.runs):
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(30_000)
            page = context.new_page()
            cold.append(one_visit(page, next(users)))
            # A new tab of the same profile: its own session storage (so a new login), the same HTTP cache.
            second = context.new_page()
            page.close()
            warm.append(one_visit(second, next(users)))
            context.close()
        browser.close()
    result = {
        "runs": args.runs,
        "cold": {k: summary([r[k] for r in cold]) for k in cold[0]},
        "warm": {k: summary([r[k] for r in warm]) for k in warm[0]},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for visit in ("cold", "warm"):
            for key, figures in result[visit].items():
                print(f"{visit:5} {key:14} p50 {figures['p50']:5d} ms   p95 {figures['p95']:5d} ms   max {figures['max']:5d} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
