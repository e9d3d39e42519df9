"""The event logs of a sandbox: merged output, exact replay, and the budget they share
(the API tests in test_hostile_output.py run the attacks; these pin the rules)."""

from __future__ import annotations

from execbox.sandboxes.eventlog import EVENT_OVERHEAD, EventLog, LogBudget


async def replay(log: EventLog, after: int = 0) -> list[tuple[int, str, dict[str, object]]]:
    log.close()
    return [(e.seq, e.kind, e.data) async for e in log.follow(after)]


async def test_output_is_merged_until_a_follower_takes_it() -> None:
    log = EventLog(1 << 20)
    log.write("stdout", b"a")
    log.write("stdout", b"b")
    follower = log.follow(0)
    assert (await anext(follower)).data == {"data": "ab"}
    log.write("stdout", b"c")  # event 1 was handed out: it never changes
    log.write("stdout", b"d")
    log.write("stderr", b"e")
    assert await replay(log) == [
        (1, "stdout", {"data": "ab"}),
        (2, "stdout", {"data": "cd"}),
        (3, "stderr", {"data": "e"}),
    ]
    assert await replay(log, after=1) == [
        (2, "stdout", {"data": "cd"}),
        (3, "stderr", {"data": "e"}),
    ]


async def test_tiny_events_are_charged_their_overhead() -> None:
    log = EventLog(10 * (EVENT_OVERHEAD + 1))
    for _ in range(100):
        log.write("stdout", b"x")
        async for _ in log.follow(log._seq - 1):  # a follower takes each at once
            break
    events = await replay(log)
    assert events[0] == (90, "dropped", {"events": 90})
    assert len(events) == 11


async def test_a_sandbox_budget_bounds_the_sum_and_finished_logs_give_way_first() -> None:
    budget = LogBudget(4 * (EVENT_OVERHEAD + 1000))
    finished, running = EventLog(1 << 20, budget), EventLog(1 << 20, budget)
    for log in (finished, running):
        for _ in range(2):
            log.write("stdout", b"f" * 1000)
            log.write("stderr", b"-")  # a new event each time
        finished.close()
    running.write("stdout", b"r" * 1000)
    assert budget.used <= budget.max_bytes
    kinds = [kind for _, kind, _ in await replay(running)]
    assert kinds == ["stdout", "stderr", "stdout", "stderr", "stdout"]
    assert (await replay(finished))[0][1] == "dropped"
    finished.release()
    running.release()
    assert budget.used == 0
