"""The served OpenAPI document stays true: schemathesis against the live HTTPS API finds no 5xx and no answer breaking it.

The spec is fetched from ``GET /v2/openapi.json``, so every area's endpoints
are tested as their fragments land. Requests carry a personal token of a
fresh non-admin user with every other scope; the limit is per token, so the
test moves to a new token before one's window is spent (the product's limit
is not lowered). Rooms the fuzzing created are deleted at the end.

Schemathesis's ``ignored_auth`` check (which repeats requests without
credentials) is replaced by `test_every_operation_refuses_anonymous_callers`,
one anonymous request per operation, so anonymous traffic stays well inside
the per-address window other tests share.
"""

from __future__ import annotations

import threading

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from tests.e2e.test_api_framework import ApiClient, assert_rate_headers, make_token

SCOPES = "admin_room,manage_rooms,send_message,send_notification,view_group,view_messages,view_room"
#: Move to a fresh token when the current one has fewer requests left than this.
SPARE_REQUESTS = 20
EXAMPLES_PER_OPERATION = 25
#: Operations whose valid-looking input may still be refused for reasons a JSON Schema cannot state
#: (the search query's Lucene syntax rules: no wildcard at the start of a word, at most 3 of them;
#: a room history's end-date must come before its date).
SEMANTIC_INPUT = {"searchMessages", "viewRoomHistory"}


class TokenPool:
    """The current token for the fuzzing; a new one (same user, same scopes) once its window is nearly spent."""

    def __init__(self, username: str):
        self.username = username
        self.lock = threading.Lock()
        self.token = make_token(username, SCOPES)["token"]

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def observe(self, response) -> None:
        remaining = response.headers.get("X-Ratelimit-Remaining", "")
        if remaining.isdigit() and int(remaining) < SPARE_REQUESTS:
            with self.lock:
                self.token = make_token(self.username, SCOPES)["token"]


@pytest.fixture(scope="module")
def api(config):
    return ApiClient(config)


@pytest.fixture(scope="module")
def fuzzer(new_user, chat_server):
    """The user the fuzzing acts as; the rooms it created are deleted afterwards."""
    username = new_user()
    yield username
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import rooms, users

    def delete_rooms(connection):
        owner = connection.execute(users.select().where(users.c.username == username)).first()
        if owner is not None:
            connection.execute(rooms.delete().where(rooms.c.owner_id == owner.id))

    run_in_transaction(chat_server.get_database_engine(), "delete_e2e_openapi_rooms", delete_rooms)


@pytest.fixture(scope="module")
def tokens(fuzzer):
    return TokenPool(fuzzer)


@pytest.fixture(scope="module")
def api_schema(api):
    response = api.get("openapi.json")
    assert response.status_code == 200, response.text
    schema = schemathesis.openapi.from_dict(response.json())
    schema.config.update(base_url=api.base)
    return schema


# schemathesis's pytest plugin (from_fixture) does not run under pytest 9, so each operation's
# strategy is driven with hypothesis here; every operation runs, and the failures are reported together.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_to_its_spec(api_schema, api, tokens, mode):
    """Generated requests (valid, then invalid) never get a 5xx, and every answer matches the spec (status, headers, body)."""
    failures, operations = [], 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        excluded = [ignored_auth]
        if operation.definition.raw.get("operationId") in SEMANTIC_INPUT:
            excluded.append(positive_data_acceptance)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call_and_validate(headers=tokens.headers(), verify=api.ca, timeout=30, excluded_checks=excluded)
            tokens.observe(response)

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation without parameters or body has nothing to break
            continue
        except (Exception, BaseExceptionGroup) as e:  # one operation's failure must not hide the others'
            failures.append(f"{operation.label}: {e}")
    assert operations >= 5
    assert not failures, "\n\n".join(failures)


def test_every_operation_refuses_anonymous_callers(api):
    """Each operation that requires credentials answers 401 (with the rate-limit headers) when none are sent."""
    spec = api.get("openapi.json").json()
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            security = operation.get("security", spec.get("security", []))
            if not security or {} in security or any("oauth_client" in s for s in security):
                continue
            concrete = path.replace("{", "").replace("}", "")  # any value: credentials are checked first
            response = requests.request(method.upper(), f"{api.base}{concrete}", verify=api.ca, timeout=30)
            assert response.status_code == 401, f"{method.upper()} {path}: {response.status_code} {response.text}"
            assert_rate_headers(response)
            checked += 1
    assert checked >= 3
