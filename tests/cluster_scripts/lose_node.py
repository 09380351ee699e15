"""Run by tests/test_cluster.py in its own process: a node lost mid-trial in a simulated cluster.

    python tests/cluster_scripts/lose_node.py SHARDS STORAGE OUT_JSON

Starts ``ray.cluster_utils.Cluster`` with a head that runs nothing (0 CPUs) and two nodes of 2
CPUs, runs ``distributed.tune`` against it (1 outer fold, 1 trial of 12 epochs per inner fold),
and once the trial has written its first checkpoint removes the node that runs the trial (its
raylet and every process on it die, as when a machine is lost). Writes to OUT_JSON the tune
exit code, the node removed, the node the trial ran on afterwards and the console.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.cluster_scripts.two_node_ddp import start_cluster  # noqa: E402


def main(shards_root: str, storage: str, out_json: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from distributed import tune

    cluster = start_cluster(Cluster, head_cpus=0, workers=2)
    workers = {n.node_id: n for n in cluster.worker_nodes}
    nodes = sorted(workers)
    seen: dict = {"removed": None, "trial_nodes": []}

    def trial_nodes() -> list[str]:
        """Nodes of the live function-trial actors (the GCS's actor table: the state API's
        HTTP server is not reliable on this loaded simulated cluster)."""
        if not ray.is_initialized():
            return []
        return [
            a["Address"]["NodeID"]
            for a in ray._private.state.actors().values()
            if a.get("ActorClassName") == "ImplicitFunc" and a.get("State") == "ALIVE"
        ]

    def remove_the_trials_node() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and seen["removed"] is None:
            if list(Path(storage, "x").glob("outer0/*/checkpoint_*")):
                for node_id in trial_nodes():
                    if node_id in workers:
                        cluster.remove_node(workers[node_id])
                        seen["removed"] = node_id
            time.sleep(0.2)
        while time.monotonic() < deadline and not seen["trial_nodes"]:
            seen["trial_nodes"] = trial_nodes()  # where it runs again
            time.sleep(0.2)

    watcher = threading.Thread(target=remove_the_trials_node, daemon=True)
    watcher.start()
    console = io.StringIO()
    argv = ["gesture", "--smoke", "--shards", shards_root, "--folds", "1", "--samples", "1",
            "--epochs", "12", "--max-concurrent", "1", "--cpus-per-worker", "1",
            "--storage", storage, "--name", "x", "--address", cluster.address]  # fmt: skip
    try:
        with contextlib.redirect_stdout(console):
            code = tune.main(argv)
    finally:
        watcher.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    seen.update(code=code, nodes=list(nodes), console=console.getvalue())
    Path(out_json).write_text(json.dumps(seen))
    return 0


if __name__ == "__main__":
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.exit(main(*sys.argv[1:4]))
