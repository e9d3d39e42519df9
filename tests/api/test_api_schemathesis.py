"""Property-based: requests generated from /openapi.json never get a 5xx or an answer
that breaks the document (status codes, content types, schemas, headers).

Every check runs but "positive data acceptance": a request can match the schema and
still be wrong for this server (a language it does not have, neither `code` nor
`files`), and then a 422 saying so is the right answer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from execbox.api.problems import PROBLEM_MEDIA_TYPE
from kit.servers import Server

KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def api_server() -> Iterator[Server]:
    # With keys: the document declares them, and schemathesis checks they are enforced.
    server = Server({"EXECBOX_API_KEYS": KEY})
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api_schema(api_server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")


def test_api_conforms_to_its_schema(api_schema: schemathesis.BaseSchema) -> None:
    # Each operation in turn, with hypothesis directly: schemathesis' pytest plugin
    # does not load under this pytest version.
    for operation in api_schema.get_all_operations():

        @given(case=operation.ok().as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                headers={"X-API-Key": KEY}, excluded_checks=[positive_data_acceptance]
            )
            if response.status_code >= 400:
                assert response.headers["content-type"][0] == PROBLEM_MEDIA_TYPE

        check()
