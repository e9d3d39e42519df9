"""Hostile programs against the reset of a reused box (sandbox/box.py): whatever a
program leaves, the box is either made as new for the next execution or freed whole
(processes, workspace mount, cgroups); never dropped half-alive. Each test runs a
pool of one box, so the next execution provably runs where the last one ran."""

from __future__ import annotations

import json

import pytest
from engine_kit import HostGuard, describe, execute, resets_done, stdout, the_box

from execbox.models import Verdict
from execbox.runner import Runner
from execbox.sandbox.workspace import Workspace

# Far deeper than Python's recursion limit (two frames a level used to be needed).
DEEP_TREE = """
import os
os.chdir({place!r})
for _ in range(3000):
    os.mkdir("d")
    os.chdir("d")
print("deep")
"""

LIST = "import json, os\nprint(json.dumps(sorted(os.listdir({place!r}))))"


@pytest.mark.parametrize("place", ["/tmp", "/box", "/dev/shm"])
async def test_a_deep_tree_is_cleared_and_its_box_reused(
    one_box: Runner, reuse_host: HostGuard, place: str
) -> None:
    box = await the_box(one_box)
    for _ in range(3):  # a leak would show as one more box per request
        made = await execute(one_box, "python", DEEP_TREE.format(place=place))
        assert stdout(made) == "deep\n", describe(made)
        assert await the_box(one_box) is box, "the box was not reset"
    looked = await execute(one_box, "python", LIST.format(place=place))
    assert json.loads(stdout(looked)) == (["main.py"] if place == "/box" else []), describe(looked)
    await reuse_host.check()


async def test_a_box_whose_reset_fails_in_any_way_is_freed(
    one_box: Runner, reuse_host: HostGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = await the_box(one_box)

    def broken(self: Workspace) -> None:
        raise RuntimeError("an unforeseen failure while clearing")

    monkeypatch.setattr(Workspace, "clear", broken)
    ran = await execute(one_box, "python", "print(1)")
    assert ran.verdict == Verdict.OK, describe(ran)
    await resets_done(one_box)
    assert box.session.ended.is_set(), "the box was not killed"
    monkeypatch.undo()
    fresh = await execute(one_box, "python", "print(2)")
    assert stdout(fresh) == "2\n", describe(fresh)
    assert await the_box(one_box) is not box
    await reuse_host.check()
