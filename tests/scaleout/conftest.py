"""A real scale-out deployment on this machine: two `execbox serve` and two `execbox
worker` processes sharing the machine's PostgreSQL and Redis (see kit.cluster).

Its tests carry needs_postgres and needs_redis (tests/conftest.py): skipped, saying why,
when PostgreSQL or Redis is not reachable; `make test` and CI require both.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from kit.cluster import TIMINGS, Cluster, wait_for_workers
from kit.databases import PG_URL, REDIS_URL, remove, start_redis
from kit.servers import Server


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    suffix = secrets.token_hex(4)
    schema, prefix = f"execbox_scaleout_{suffix}", f"execbox-test-{suffix}"
    env = {
        "EXECBOX_DATABASE_URL": PG_URL,
        "EXECBOX_DATABASE_SCHEMA": schema,
        "EXECBOX_REDIS_URL": REDIS_URL,
        "EXECBOX_REDIS_PREFIX": prefix,
        "EXECBOX_SHUTDOWN_GRACE_S": "2",
        "EXECBOX_QUEUE_SIZE": "5000",
        **TIMINGS,
    }
    cluster = Cluster(env, schema)
    try:
        for _ in range(2):
            cluster.add_worker()
        cluster.apis = [Server(env), Server(env)]
        with ThreadPoolExecutor() as starting:  # each takes seconds (language probes)
            list(starting.map(Server.start, cluster.apis))
        wait_for_workers(cluster.apis[0].url, len(cluster.workers))
        yield cluster
    finally:
        start_redis()  # whatever a test did to it
        for process in [*cluster.apis, *cluster.workers]:
            if process.proc is not None:
                process.stop()
            shutil.rmtree(process.data_dir, ignore_errors=True)
        remove(schema, prefix)
