"""Run by tests/test_cluster.py in its own process: 2-worker DDP across a simulated 2-node cluster.

    python tests/cluster_scripts/two_node_ddp.py SHARDS STORAGE_URI OUT_JSON

Starts ``ray.cluster_utils.Cluster`` (two nodes of 2 CPUs: Ray Data needs more than the workers'
share), joins it through ``init_ray(address=...)`` like a job on a real cluster, fits one inner
fold with ``placement_strategy="STRICT_SPREAD"`` (one worker per node, or no placement at all)
and writes what it observed to OUT_JSON: the node of every Train worker actor, and the final
parameters of each rank (dumped by the worker) so the test can check DDP synchronised them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(cluster_cls, attempts: int = 2, head_cpus: int = 2, workers: int = 1):
    """A head of ``head_cpus`` and ``workers`` nodes of 2 CPUs, on free ports. Ray waits a fixed
    30 s for a raylet to register, which a heavily loaded 2-core machine can miss: one retry,
    then give up."""
    for attempt in range(attempts):
        cluster = cluster_cls(shutdown_at_exit=True)
        try:
            cluster.add_node(
                num_cpus=head_cpus,
                gcs_server_port=free_port(),
                dashboard_port=free_port(),
                dashboard_agent_listen_port=free_port(),
                ray_client_server_port=free_port(),
            )
            for _ in range(workers):
                cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def main(shards_root: str, storage_uri: str, out_json: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from branches import get_branch
    from datasets.manifest import read_manifest, read_protocol
    from distributed.core.config import default_config
    from distributed.core.runtime import init_ray
    from distributed.training.checkpoint import TrainedOn
    from distributed.training.launch import FoldSpec, Resources, fit_folds, prepare_datasets
    from tests import faults

    cluster = start_cluster(Cluster)
    try:
        init_ray(address=cluster.address)
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        manifest = read_manifest(shards_root)
        inner = read_protocol(shards_root, manifest)[1].fold(0).inner[0]
        spec = FoldSpec(inner.train, inner.val, TrainedOn(0, 0))
        cfg = default_config("gesture", **{**get_branch("gesture").smoke, "epochs": 1})
        dump = Path(out_json).with_suffix(".params")
        dump.mkdir(parents=True, exist_ok=True)
        fit_folds(
            cfg,
            prepare_datasets(shards_root, [spec]),
            resources=Resources(workers=2, cpus_per_worker=0.5, placement_strategy="STRICT_SPREAD"),
            storage_path=storage_uri,
            name="two-node",
            write_model=False,
            max_failures=0,
            loop=faults.dumping_params(str(dump)),
        )
        # Actor records stay in the GCS after the actors exit: where did the workers run?
        actors = ray._private.state.actors().values()
        worker_nodes = sorted(
            a["Address"]["NodeID"] for a in actors if "TrainWorker" in a.get("ActorClassName", "")
        )
        Path(out_json).write_text(
            json.dumps({"nodes": nodes, "worker_nodes": worker_nodes, "params_dir": str(dump)})
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    # Both nodes' raylets are children of this process: their workers inherit this environment,
    # so they import the repository's packages as a job's working_dir would provide them.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.exit(main(*sys.argv[1:4]))
