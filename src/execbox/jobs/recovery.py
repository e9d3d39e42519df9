"""After a restart of the embedded mode: the jobs the dead process left behind.

Jobs left running are queued again (or failed once they were started
``max_attempts`` times), and every queued job goes back into the queue, which lived
in memory. Interactive jobs are cancelled instead: their stdin was a connection
that is gone, and a re-run without it would answer nobody. (In scale-out mode,
running jobs may belong to live workers elsewhere: workers/upkeep.py finds those
that are not.)
"""

from __future__ import annotations

from execbox.jobs.service import JobService
from execbox.jobs.states import Status

SESSION_ENDED = "the interactive session ended: the server restarted"


async def recover_after_restart(jobs: JobService, max_attempts: int) -> int:
    """Returns how many jobs were queued again."""
    for job_id in await jobs.ids(Status.RUNNING):
        job = await jobs.get(job_id)
        if job.interactive:
            await jobs.end_interactive(job_id, SESSION_ENDED)
            continue
        await jobs.hand_back(
            job, reason="the server restarted", lost="the server stopped", max_attempts=max_attempts
        )
    queued = 0
    for job_id in await jobs.ids(Status.QUEUED):
        job = await jobs.get(job_id)
        if job.interactive:
            await jobs.end_interactive(job_id, SESSION_ENDED)
            continue
        await jobs.queue_again(job)
        queued += 1
    return queued
