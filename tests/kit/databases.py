"""The machine's PostgreSQL and Redis in tests: a schema or a key prefix of each test's
own, removed afterwards; Redis stopped and started again for outage tests."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import asyncpg
import redis

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_START_LIMIT_S = 60  # a guard against a hang, not a measurement


def drop_schema(schema: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


REDIS_DB = 11
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
# How this machine's Redis was started (no persistence: a restart loses every key).
REDIS_SERVER = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


# Short heartbeats and leases, so a killed worker's jobs come back within seconds.
def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def stop_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False)
    while reachable(6379):
        time.sleep(0.05)


def start_redis() -> None:
    """Starts the machine's Redis as it was started, unless it is running."""
    if not redis_up():
        subprocess.run(REDIS_SERVER, check=True)
    deadline = time.monotonic() + REDIS_START_LIMIT_S
    while not redis_up():
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not come back")
        time.sleep(0.05)


def remove(schema: str, prefix: str, redis_url: str = REDIS_URL) -> None:
    """Drops the deployment's schema and deletes its Redis keys."""
    drop_schema(schema)
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"saq:{prefix}:*", f"saq:job:{prefix}:*", f"{prefix}:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)
