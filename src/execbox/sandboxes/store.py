"""Sandbox and build records (tables in store/schema.py). A sandbox's processes live in the server
that started it; its record says which server (``owner``), so that after a restart
the sandbox is reported as lost instead of looking alive."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from execbox.sandboxes.schemas import BuildInfo, SandboxInfo, SandboxStatus
from execbox.store import Database
from execbox.store.schema import sandbox_builds, sandboxes


class SandboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, info: SandboxInfo, owner: str) -> None:
        values: dict[str, Any] = {
            "status": info.status.value,
            "owner": owner,
            "info": info.model_dump(mode="json"),
            "expires_at": info.expires_at,
        }
        async with self.db.write() as conn:
            updated = await conn.execute(
                sa.update(sandboxes).where(sandboxes.c.id == info.id).values(**values)
            )
            if updated.rowcount == 0:
                await conn.execute(
                    sa.insert(sandboxes).values(id=info.id, created_at=info.created_at, **values)
                )

    async def get(self, sandbox_id: str) -> tuple[SandboxInfo, str] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(sandboxes.c.info, sandboxes.c.owner).where(
                        sandboxes.c.id == sandbox_id
                    )
                )
            ).first()
        return (SandboxInfo.model_validate(row.info), row.owner) if row else None

    async def list(self, status: SandboxStatus | None, limit: int) -> list[SandboxInfo]:
        query = sa.select(sandboxes.c.info).order_by(sandboxes.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(sandboxes.c.status == status.value)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [SandboxInfo.model_validate(row.info) for row in rows]

    async def running_of(self, owner_prefix: str) -> list[tuple[SandboxInfo, str]]:
        """Running sandboxes whose owner starts with ``owner_prefix`` (one host's)."""
        query = sa.select(sandboxes.c.info, sandboxes.c.owner).where(
            sandboxes.c.status == SandboxStatus.RUNNING.value,
            sandboxes.c.owner.startswith(owner_prefix, autoescape=True),
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(SandboxInfo.model_validate(row.info), row.owner) for row in rows]

    async def save_build(self, build: BuildInfo) -> None:
        values = {"info": build.model_dump(mode="json")}
        async with self.db.write() as conn:
            updated = await conn.execute(
                sa.update(sandbox_builds).where(sandbox_builds.c.id == build.id).values(**values)
            )
            if updated.rowcount == 0:
                await conn.execute(
                    sa.insert(sandbox_builds).values(
                        id=build.id,
                        sandbox_id=build.sandbox_id,
                        version=build.build_version,
                        **values,
                    )
                )

    async def get_build(self, sandbox_id: str, build_id: str) -> BuildInfo | None:
        query = sa.select(sandbox_builds.c.info).where(
            sandbox_builds.c.id == build_id, sandbox_builds.c.sandbox_id == sandbox_id
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return BuildInfo.model_validate(row.info) if row else None

    async def builds(self, sandbox_id: str) -> list[BuildInfo]:
        query = (
            sa.select(sandbox_builds.c.info)
            .where(sandbox_builds.c.sandbox_id == sandbox_id)
            .order_by(sandbox_builds.c.version)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [BuildInfo.model_validate(row.info) for row in rows]
