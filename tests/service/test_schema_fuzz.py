"""The OpenAPI schema says what the server accepts (issue 9, item 7): schemathesis against the live
app on 127.0.0.1, a few examples per operation (bounded), with a write key so every route is
reached. Any 5xx, an undocumented status code, a response that does not match its schema or a 405
whose ``Allow`` misses a method fails the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup

WRITE = {"X-API-Key": "test-write-key"}
EXAMPLES = 4  # per operation; 15 operations (and 10 aliases) -> a few dozen cases, well under a minute
# The deprecated unversioned aliases run the same handlers as their /v1 routes: one case each checks
# that their documented schema is the served one without doubling the run.
ALIAS_EXAMPLES = 1
# "Schema-valid request rejected": JSON Schema cannot say that a frame must be a decodable image,
# a descriptor unit-norm or metadata a JSON object's text, so generated bodies that break those
# rules are rightly refused (4xx with their own codes). Every other check runs.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def live_url(
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    module_thread_server: Callable[..., Any],
) -> str:
    store = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'gallery.sqlite'}"
    server = module_thread_server(make_settings(checkpoints.a, store, max_frames_per_tracklet=8))
    with server.client() as client:
        client.enroll(make_tracklet(3), "known", tracklet_id="known_1", camera="cam1")
    return str(server.url)


# Codes that mean "the request broke a rule the schema could have stated" (field types, lengths,
# patterns, required fields, content types): a schema-valid request must never get them.
SCHEMA_LEVEL = {"invalid_request", "unsupported_media_type", "malformed_multipart", "duplicate_field",
                "unexpected_file", "invalid_frame", "invalid_json", "bad_content_length", "no_frames",
                "too_many_frames", "too_many_records", "empty_batch", "dimension_mismatch"}


def _schema_level_rejection(response: Any) -> str | None:
    if response.status_code not in (400, 413, 415, 422):
        return None
    detail = response.json().get("detail", {})
    if detail.get("error") not in SCHEMA_LEVEL:
        return None  # a rule of content the schema cannot state (image, unit norm, checkpoint)
    if detail.get("field") == "metadata":
        return None  # "a JSON object's text" is not a JSON-Schema string constraint
    return f"{response.status_code} {detail}"


def _fuzz(operation: Any, live_url: str, failures: list[str]) -> int:
    """Run ``EXAMPLES`` generated cases of one operation; returns how many ran."""
    ran = 0
    deprecated = bool(operation.definition.raw.get("deprecated"))

    @given(case=operation.as_strategy())
    @settings(
        max_examples=ALIAS_EXAMPLES if deprecated else EXAMPLES,
        deadline=None,
        derandomize=True,  # the same cases every run: a failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            response = case.call_and_validate(base_url=live_url, headers=WRITE, timeout=60, excluded_checks=EXCLUDED)
        except (Exception, FailureGroup) as exc:  # collected: every operation runs, all failures shown
            failures.append(f"{operation.label}: {exc}\n{getattr(exc, 'exceptions', '')}")
            return
        drift = _schema_level_rejection(response)
        if drift is not None:
            failures.append(f"{operation.label}: schema-valid request refused by a schema rule: {drift}")

    run()
    return ran


def test_api_conforms_to_its_schema(live_url: str) -> None:
    # Driven through hypothesis directly: schemathesis's pytest plugin does not load under pytest 9.
    api = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len([op for op in operations if op.path.startswith("/v1/")]) == 15
    cases = sum(_fuzz(op, live_url, failures) for op in operations)
    assert cases >= 18 * 2
    assert failures == [], "\n\n".join(failures)


def test_405_lists_every_allowed_method(live_url: str) -> None:
    response = httpx.post(f"{live_url}/tracklets/{uuid.uuid4().hex}", headers=WRITE)
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "DELETE"}
    assert response.json()["detail"]["error"] == "method_not_allowed"
    response = httpx.put(f"{live_url}/identities/x", headers=WRITE)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "DELETE"}


def test_schema_states_the_served_limits(live_url: str) -> None:
    """Limits that depend on the settings and the checkpoint are in the schema as served."""
    doc = httpx.get(f"{live_url}/openapi.json").json()
    stats = httpx.get(f"{live_url}/stats", headers=WRITE).json()
    batch = doc["paths"]["/tracklets/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    descriptor = batch["items"]["properties"]["descriptor"]
    assert descriptor["minItems"] == descriptor["maxItems"] == stats["dim"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 20_000)
    enroll = doc["paths"]["/tracklets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert enroll["properties"]["frames"]["maxItems"] == 8
    assert enroll["properties"]["identity"]["minLength"] == 1
    assert "anyOf" not in enroll["properties"]["platform"]  # a form field cannot be null
    form = doc["paths"]["/query"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["top_k"]["maximum"] == 1000
    # A form field is never null (since/until keep their two text forms: number or date-time).
    assert all(v.get("type") != "null" for p in form["properties"].values() for v in p.get("anyOf", [p]))
    assert doc["paths"]["/v1/query"]["post"]["requestBody"] == doc["paths"]["/query"]["post"]["requestBody"]
    batch = doc["paths"]["/v1/query/batch"]["post"]["requestBody"]["content"]
    queries = batch["multipart/form-data"]["schema"]["properties"]["queries"]
    assert (queries["minItems"], queries["maxItems"]) == (1, 32)
    assert queries["items"]["properties"]["frames"]["anyOf"][0]["maximum"] == 8
    assert batch["multipart/form-data"]["schema"]["properties"]["frames"]["maxItems"] == 32 * 8
    assert batch["application/json"]["schema"]["properties"]["queries"]["items"]["properties"]["top_k"]["maximum"] == 1000
