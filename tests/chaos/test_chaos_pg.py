"""The CI variant of the multi-node chaos run (make test; make chaos runs the
long one, tests/chaos/multinode.py): 3 nodes on one real PostgreSQL, 8 kill
-9s of random nodes with restarts, the database crashed and restarted once,
continuous submissions and cancels through random nodes; every accepted job
ends completed, canceled or failed with a reason, every image is read from
every node, nothing is orphaned, repeated runs only after lease expiries."""
import argparse
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import multinode  # noqa: E402


@pytest.mark.timeout(300)
def test_multinode_chaos_short():
    exe = common.easel_binary()
    if not os.access(exe, os.X_OK):
        pytest.skip(f"no easel binary at {exe} (build first, or set EASEL_BUILD)")
    s = multinode.run(argparse.Namespace(nodes=3, kills=8, duration=30, lease="3s", wait=120,
                                         seed=21, build=None))
    if "skipped" in s:
        multinode.pgmod.skip_or_fail(s["skipped"])
    print("multinode: " + json.dumps(s))
    assert s["n_problems"] == 0, s["problems"]
    assert s["kills"] >= 5 and s["db_down_s"] is not None, s
    assert s["accepted"] > 30 and s["server_errors"] == 0, s
    assert s["final_status"].get("completed", 0) > 0
