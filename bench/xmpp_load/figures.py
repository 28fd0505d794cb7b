"""Percentiles and the side-by-side tables the benchmark prints."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def percentiles(values: Sequence[float], ranks: Iterable[float] = (50, 95, 99)) -> dict:
    """Nearest-rank percentiles of ``values``; None for each rank when there are none."""
    ordered = sorted(values)
    out = {}
    for rank in ranks:
        if not ordered:
            out[rank] = None
        else:
            out[rank] = ordered[max(0, math.ceil(rank / 100 * len(ordered)) - 1)]
    return out


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value)


# The rows each scenario prints, in order: (key in the figures, label).
ROWS = {
    "hold": [
        ("sessions_requested", "sessions requested"),
        ("sessions_bound", "sessions bound"),
        ("login_failures", "login failures"),
        ("mechanism", "SASL mechanism"),
        ("stream_management", "XEP-0198 offered"),
        ("login_rate_per_s", "login rate (sessions/s)"),
        ("peak_login_rate_per_s", "peak login rate in one second"),
        ("time_to_all_in_s", "time to all in (s)"),
        ("server_rss_before_mib", "server RSS before (MiB)"),
        ("server_rss_after_mib", "server RSS with sessions (MiB)"),
        ("server_kib_per_session", "server memory per session (KiB)"),
        ("server_processes", "server processes measured"),
    ],
    "chat": [
        ("pairs", "pairs"),
        ("target_rate_per_s", "target rate (msg/s)"),
        ("duration_s", "duration (s)"),
        ("sent", "messages sent"),
        ("received", "messages received (unique)"),
        ("lost", "lost"),
        ("duplicates", "duplicates"),
        ("bounced", "bounced with an error"),
        ("achieved_rate_per_s", "achieved rate (msg/s received)"),
        ("latency_p50_ms", "latency p50 (ms)"),
        ("latency_p95_ms", "latency p95 (ms)"),
        ("latency_p99_ms", "latency p99 (ms)"),
        ("latency_max_ms", "latency max (ms)"),
        ("ack_p50_ms", "XEP-0198 ack p50 (ms)"),
        ("ack_p99_ms", "XEP-0198 ack p99 (ms)"),
        ("unacked", "messages never acked"),
    ],
    "rooms": [
        ("rooms", "rooms"),
        ("occupants_per_room", "occupants per room"),
        ("occupants_joined", "occupants joined"),
        ("rooms_created", "rooms created by this run"),
        ("join_p50_ms", "join p50 (ms)"),
        ("target_rate_per_s", "target rate (msg/s into rooms)"),
        ("send_rate_per_s", "achieved send rate (msg/s)"),
        ("duration_s", "duration (s)"),
        ("messages_sent", "messages sent"),
        ("deliveries_expected", "deliveries expected (msgs x occupants)"),
        ("deliveries_received", "deliveries received (unique)"),
        ("lost", "lost"),
        ("duplicates", "duplicates"),
        ("bounced", "bounced with an error"),
        ("deliveries_per_s", "deliveries/s"),
        ("latency_p50_ms", "latency p50 (ms)"),
        ("latency_p95_ms", "latency p95 (ms)"),
        ("latency_p99_ms", "latency p99 (ms)"),
        ("latency_max_ms", "latency max (ms)"),
        ("ack_p50_ms", "XEP-0198 ack p50 (ms)"),
        ("ack_p99_ms", "XEP-0198 ack p99 (ms)"),
        ("unacked", "messages never acked"),
        ("cpu_cores", "CPU cores used while sending"),
    ],
    "storm": [
        ("clients", "clients in the storm"),
        ("reconnect_spread_s", "reconnects spread over (s)"),
        ("rebound", "clients back (bound again)"),
        ("time_to_all_back_s", "time until all back (s)"),
        ("rebind_p50_s", "time to rebind p50 (s)"),
        ("rebind_p99_s", "time to rebind p99 (s)"),
        ("failed_attempts", "failed login attempts"),
        ("gave_up", "clients not back by the deadline"),
        ("failure_kinds", "failure kinds"),
        ("storm_messages_sent", "messages sent to them in the storm"),
        ("storm_messages_received", "... received (unique)"),
        ("storm_messages_bounced", "... bounced with an error"),
        ("storm_messages_missing", "... neither (lost)"),
        ("server_alive_after", "server processes all alive after"),
    ],
}

ROWS["ingest"] = ROWS["chat"] + [
    ("samples", "messages sampled for the indexing lag"),
    ("samples_never_visible", "... never visible in OpenSearch"),
    ("index_lag_p50_s", "indexing lag p50 (s)"),
    ("index_lag_p95_s", "indexing lag p95 (s)"),
    ("index_lag_p99_s", "indexing lag p99 (s)"),
    ("index_lag_max_s", "indexing lag max (s)"),
    ("server_to_index_p50_s", "archived -> searchable p50 (s)"),
    ("server_to_index_p99_s", "archived -> searchable p99 (s)"),
    ("index_poll_s", "OpenSearch polled every (s)"),
    ("acked", "messages acknowledged"),
    ("indexed_docs", "documents of the run in OpenSearch"),
    ("acked_not_indexed", "acknowledged, not in OpenSearch"),
    ("indexed_duplicates", "duplicate documents"),
    ("indexed_not_acked", "in OpenSearch, not acknowledged"),
    ("cpu_cores", "CPU cores used (sending + drain)"),
]

TARGETS = {
    "hold": {
        "sessions_bound": ">= 10,000",
        "login_rate_per_s": ">= 500",
        "server_kib_per_session": "< 50",
    },
    "chat": {
        "pairs": "100",
        "achieved_rate_per_s": ">= 1,500",
        "lost": "0",
        "latency_p99_ms": "< 100",
        "ack_p50_ms": "durable before ack",
    },
    "rooms": {
        "rooms": "10",
        "occupants_per_room": "20",
        "deliveries_per_s": ">= 12,000",
        "lost": "0",
        "duplicates": "0",
        "latency_p99_ms": "< 100",
        "ack_p50_ms": "durable before ack",
    },
    "ingest": {
        "achieved_rate_per_s": ">= 2,000",
        "lost": "0",
        "index_lag_p99_s": "< 2",
        "acked_not_indexed": "0",
        "indexed_duplicates": "0",
    },
    "storm": {
        "clients": "5,000",
        "reconnect_spread_s": "1",
        "time_to_all_back_s": "< 60",
        "storm_messages_missing": "0",
        "server_alive_after": "yes",
    },
}


def table_rows(scenario: str, results: Sequence[dict]) -> list[list[str]]:
    """Rows of label, one column per result, and the target."""
    rows = []
    targets = TARGETS.get(scenario, {})
    for key, label in ROWS[scenario]:
        if not any(key in r["figures"] for r in results):
            continue
        rows.append([label] + [fmt(r["figures"].get(key)) for r in results] + [targets.get(key, "")])
    return rows


def print_table(scenario: str, results: Sequence[dict]) -> None:
    """Print one scenario's figures, one column per server, with the issue's targets."""
    headers = ["figure"] + [r["server"] for r in results] + ["target"]
    rows = table_rows(scenario, results)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when rich is not there
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
        for row in [headers] + rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        return
    table = Table(title=f"XMPP benchmark: {scenario}")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    for r in results:
        for note in r.get("notes", []):
            print(f"  note ({r['server']}): {note}")
