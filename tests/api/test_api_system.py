"""Languages, health, metrics and the OpenAPI document of a live server; the
internal-failure and unhealthy paths in process."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from fastapi.testclient import TestClient

from execbox.api.app import create_app
from execbox.config import Settings
from execbox.engine import SandboxError
from execbox.models import ExecutionRequest, ExecutionResult
from execbox.store import Database
from execbox.wiring import Services
from kit.host import claim_uids
from kit.servers import run


def test_languages(client: httpx.Client) -> None:
    languages = {item["name"]: item for item in client.get("/v1/languages").json()}
    assert {"python", "c", "cpp", "java", "go", "rust", "javascript", "bash"} <= set(languages)
    assert languages["python"]["version"]
    assert languages["c"]["compiled"] is True
    assert languages["python"]["compiled"] is False


def test_health_and_metrics(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "checks": {"database": "ok", "queue": "ok", "sandbox": "ok"},
    }
    run(client, "print(1)")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'execbox_executions_total{language="python",status="completed",verdict="ok"}' in text
    for name in (
        "execbox_execution_duration_seconds_bucket",
        "execbox_queue_depth",
        "execbox_running_jobs",
        "execbox_sandbox_failures_total",
        "execbox_http_requests_total",
    ):
        assert name in text


def test_openapi_describes_the_contract(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for path in (
        "/v1/executions",
        "/v1/executions/{job_id}",
        "/v1/executions/{job_id}/cancel",
        "/v1/executions/{job_id}/events",
        "/v1/executions/{job_id}/activity",
        "/v1/languages",
        "/health",
        "/metrics",
    ):
        assert path in schema["paths"], path
    result = schema["components"]["schemas"]["ExecutionResult"]["properties"]
    for name in ("id", "status", "language", "verdict", "compile", "run", "tests", "error"):
        assert name in result
    post = schema["paths"]["/v1/executions"]["post"]["responses"]
    assert "application/problem+json" in post["422"]["content"]


@pytest.fixture(scope="module")
def local() -> Iterator[TestClient]:
    data_dir = Path(tempfile.mkdtemp(prefix="execbox-inproc-"))
    uids = claim_uids()
    app = create_app(Settings(data_dir=data_dir, workers=1, **uids.settings))
    with TestClient(app, base_url="http://localhost") as client:
        yield client
    uids.release()
    shutil.rmtree(data_dir, ignore_errors=True)


def test_internal_failure_is_a_failed_job_with_a_logged_debug_id(
    local: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    services: Services = local.app.state.services  # type: ignore[attr-defined]

    async def broken(request: ExecutionRequest, **_: object) -> ExecutionResult:
        raise SandboxError("cgroup vanished")  # a host failure, as the sandbox reports it

    monkeypatch.setattr(services.runner, "execute", broken)
    with structlog.testing.capture_logs() as logs:
        result = local.post("/v1/executions", json={"language": "python", "code": "1"}).json()
    assert result["status"] == "failed"
    assert result["verdict"] is None
    error = result["error"]
    assert "internal error" in error["message"]
    assert "cgroup" not in error["message"]  # host details stay in the log
    logged = [entry for entry in logs if entry.get("debug_id") == error["debug_id"]]
    assert logged and logged[0]["exc_info"] is True
    activity = local.get(f"/v1/executions/{result['id']}/activity").json()["events"]
    errors = [entry for entry in activity if entry["type"] == "error"]
    assert [entry["debug_id"] for entry in errors] == [error["debug_id"]]


def test_health_names_the_failing_check(local: TestClient) -> None:
    services: Services = local.app.state.services  # type: ignore[attr-defined]
    working = services.db
    services.db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/unreachable")
    try:
        response = local.get("/health")
    finally:
        services.db = working  # the unreachable one never opened a connection
    assert response.status_code == 503
    problem = response.json()
    assert problem["detail"].startswith("unhealthy: database failed")
    assert problem["checks"]["sandbox"] == "ok"
    assert problem["checks"]["database"].startswith("failed")
