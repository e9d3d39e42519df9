"""A persistent sandbox's program nests directories far deeper than Python may
recurse: deleting the tree through the files API removes it (it gave a 500), the
server stays healthy and the sandbox's processes go with it
(and none more)."""

from __future__ import annotations

import httpx
from test_sandboxes_api import create, run, sandbox_processes, wait_until

from kit.servers import Server

DEEP_TREE = """
import os
os.mkdir("deep"); os.chdir("deep")
for _ in range(3000):
    os.mkdir("d"); os.chdir("d")
    open("f", "w").close()
print("deep")
"""


def test_deleting_a_deep_tree_through_the_files_api(client: httpx.Client, server: Server) -> None:
    sid = create(client)["id"]
    boxes = len(sandbox_processes(server, "bwrap"))  # this sandbox's and the warm pool's
    client.put(f"/v1/sandboxes/{sid}/files/deep.py", content=DEEP_TREE.encode())
    made = run(client, sid, "python3 deep.py")["result"]
    assert made["stdout"] == "deep\n", made
    removed = client.delete(f"/v1/sandboxes/{sid}/files/deep")
    assert removed.status_code == 204, removed.text
    listed = [e["path"] for e in client.get(f"/v1/sandboxes/{sid}/files").json()]
    assert listed == ["deep.py"], listed
    assert run(client, sid, "ls")["result"]["stdout"] == "deep.py\n"
    assert client.get("/health").status_code == 200
    assert client.delete(f"/v1/sandboxes/{sid}").json()["status"] == "killed"
    # The warm pool refills with one sandbox for the one taken, and no more.
    wait_until(lambda: len(sandbox_processes(server, "bwrap")) == boxes)
