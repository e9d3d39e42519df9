"""Prometheus metrics. Each service instance has its own registry, so several can
live in one process (tests) without clashing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from execbox.models import ExecutionResult
from execbox.store import Job

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.executions = Counter(
            "execbox_executions", "Finished executions", ["language", "status", "verdict"],
            registry=r,
        )  # fmt: skip
        self.execution_seconds = Histogram(
            "execbox_execution_duration_seconds", "From start to finish of a job",
            ["language"], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "execbox_queue_wait_seconds", "From submission to start of a job",
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("execbox_queue_depth", "Jobs waiting for a worker", registry=r)
        self.running = Gauge("execbox_running_jobs", "Jobs running now", registry=r)
        self.sandbox_failures = Counter(
            "execbox_sandbox_failures", "Jobs failed by a sandbox (host) error", registry=r
        )
        self.webhooks = Counter(
            "execbox_webhook_deliveries", "Webhook deliveries by outcome", ["outcome"], registry=r
        )
        self.http_requests = Counter(
            "execbox_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "execbox_http_request_duration_seconds", "HTTP request handling time",
            ["method", "route"], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip

    def record_started(self, job: Job) -> None:
        self.running.inc()
        if job.started_at is not None:
            self.queue_wait_seconds.observe((job.started_at - job.created_at).total_seconds())

    def record_finished(self) -> None:
        self.running.dec()

    def record_result(self, result: ExecutionResult) -> None:
        language = result.language.name
        verdict = result.verdict.value if result.verdict else "none"
        self.executions.labels(language, result.status.value, verdict).inc()
        if result.started_at and result.finished_at:
            seconds = (result.finished_at - result.started_at).total_seconds()
            self.execution_seconds.labels(language).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
