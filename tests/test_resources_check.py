"""Requests no node can hold end in one line and exit 2 before anything waits on them; a
possible request that waits says so every 30 s (``distributed.core.capacity``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from distributed.core.capacity import Request, Watch, impossible, progress, waiting_line

CPU_NODE = {"CPU": 4.0, "memory": 1e10}
GPU4 = {"CPU": 48.0, "GPU": 4.0}


def test_a_gpu_on_a_cpu_only_cluster_is_impossible():
    line = impossible(Request("a trial", 1, 0.5, 1.0), [CPU_NODE])
    assert line == (
        "a trial needs 1 GPU per worker; no node of this cluster has a GPU (nodes: 1, GPUs: 0); "
        "drop --gpus-per-worker or run on a GPU cluster"
    )
    line = impossible(Request("the fit", 1, 1.0, 1.0, gpus_flag="--gpu"), [CPU_NODE, CPU_NODE])
    assert line.startswith("the fit needs 1 GPU per worker; no node of this cluster has a GPU")
    assert "(nodes: 2, GPUs: 0); drop --gpu or run" in line


def test_eight_gpu_workers_packed_on_one_node_do_not_fit_nodes_of_four():
    nodes = [GPU4, GPU4]
    line = impossible(Request("a trial", 8, 1.0, 1.0, "STRICT_PACK"), nodes)
    assert line is not None
    assert "packs its 8 workers ({CPU: 8, GPU: 8}) on one node" in line
    assert "the largest node holds 4 of them (nodes: 2, GPUs: 8" in line
    assert "--workers-per-trial" in line
    assert impossible(Request("a trial", 8, 1.0, 1.0, "PACK"), nodes) is None  # may span
    assert impossible(Request("a trial", 4, 1.0, 1.0, "STRICT_PACK"), nodes) is None
    spread = impossible(Request("a trial", 9, 1.0, 1.0, "PACK"), nodes)
    assert spread is not None and "the cluster holds 8 of them" in spread


def test_fractional_gpus_fit():
    assert impossible(Request("a trial", 1, 0.5, 0.5), [{"CPU": 2.0, "GPU": 1.0}]) is None
    assert (
        impossible(Request("a trial", 2, 0.5, 0.5, "STRICT_PACK"), [{"CPU": 2, "GPU": 1}]) is None
    )
    line = impossible(Request("a trial", 3, 0.5, 0.5, "STRICT_PACK"), [{"CPU": 2, "GPU": 1}])
    assert line is not None and "holds 2 of them" in line
    line = impossible(Request("a trial", 1, 0.5, 2.0), [{"CPU": 8, "GPU": 1}])
    assert line is not None
    assert line.startswith("a trial needs 2 GPUs per worker; the largest node has 1 GPU")


def test_more_cpus_per_worker_than_any_node_has():
    line = impossible(Request("a trial", 1, 16.0), [CPU_NODE, {"CPU": 8.0}])
    assert line == (
        "a trial needs 16 CPUs per worker; the largest node has 8 CPUs (nodes: 2, CPUs: 12); "
        "lower --cpus-per-worker"
    )
    # a head that never trains (CPU 0) and GPU nodes without enough CPUs for a GPU worker
    line = impossible(
        Request("a trial", 1, 4.0, 1.0), [{"CPU": 0}, {"CPU": 8}, {"GPU": 1, "CPU": 2}]
    )
    assert line is not None and "no node has both" in line
    assert impossible(Request("a trial", 0, 99.0, 9.0), [CPU_NODE]) is None  # nothing asked


def test_the_waiting_line_comes_every_period_until_a_group_is_created():
    request = Request("a trial", 1, 0.5, 1.0)
    pending = {"bundles": {0: {"CPU": 0.5, "GPU": 1.0}}, "state": "PENDING"}
    other = {"bundles": {0: {"CPU": 0.01}}, "state": "CREATED"}  # a trial's driver: not ours
    assert progress(request, []) == "none"
    assert progress(request, [pending, other]) == "waiting"
    assert progress(request, [pending, {**pending, "state": "CREATED"}]) == "started"
    assert waiting_line(request, {"CPU": 3.5, "memory": 1.0}) == (
        "waiting for resources: 1 trial needs {CPU: 0.5, GPU: 1}; the cluster has "
        "{CPU: 3.5, GPU: 0} free"
    )
    groups, lines = [pending], []
    created = threading.Event()

    def emit(line):
        lines.append(line)
        if len(lines) == 2:
            groups[0] = {**pending, "state": "CREATED"}
            created.set()

    with Watch(request, lambda: list(groups), lambda: {"CPU": 3.5}, emit, every=0.02):
        assert created.wait(5)
        time.sleep(0.1)
    assert lines == [waiting_line(request, {"CPU": 3.5})] * 2  # none after the start


def _expect_refused(capsys, main, argv, line: str, started_at: float) -> None:
    assert main(argv) == 2
    assert time.monotonic() - started_at < 30, "the refusal took longer than a few seconds"
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {line}"], err


@pytest.mark.ray
@pytest.mark.timeout(60, func_only=True)  # the old code waited for ever on this
def test_tune_asking_for_a_gpu_on_a_cpu_cluster_exits_2_and_starts_no_trial(
    gesture_shards, ray_session, tmp_path, capsys
):
    from distributed import tune

    before = set(ray_session.util.placement_group_table())
    argv = ["gesture", "--shards", gesture_shards, "--smoke", "--gpus-per-worker", "1",
            "--storage", str(tmp_path / "runs"), "--name", "gpu"]  # fmt: skip
    line = (
        "a trial needs 1 GPU per worker; no node of this cluster has a GPU (nodes: 1, GPUs: 0); "
        "drop --gpus-per-worker or run on a GPU cluster"
    )
    _expect_refused(capsys, tune.main, argv, line, time.monotonic())
    assert not (tmp_path / "runs" / "gpu" / "outer0").exists()  # no Tune experiment
    assert set(ray_session.util.placement_group_table()) == before  # nothing asked of Ray


@pytest.mark.ray
# the old code waited for ever here, catching the signal-based timeout's exception (a before-run
# went on for 455 s): the thread method ends the test process instead
@pytest.mark.timeout(60, func_only=True, method="thread")
def test_train_asking_for_a_gpu_worker_on_a_cpu_cluster_exits_2(
    gesture_shards, ray_session, tmp_path, capsys
):
    from distributed import train

    before = set(ray_session.util.placement_group_table())
    argv = ["gesture", "--shards", gesture_shards, "--fold", "0", "--smoke", "--gpu",
            "--workers", "1", "--out", str(tmp_path / "runs")]  # fmt: skip
    line = (
        "the fit needs 1 GPU per worker; no node of this cluster has a GPU (nodes: 1, GPUs: 0); "
        "drop --gpu or run on a GPU cluster"
    )
    _expect_refused(capsys, train.main, argv, line, time.monotonic())
    assert set(ray_session.util.placement_group_table()) == before


# --- autoscaling clusters: the node types of the config `ray up` leaves on the head node ------

ROOT = Path(__file__).resolve().parents[1]


def test_node_types_of_our_cluster_yaml_and_what_they_can_never_hold():
    from distributed.core.capacity import impossible_on_types, node_types

    types = node_types(str(ROOT / "cluster.yaml"))
    assert types["head_cpu"] == {"resources": {"CPU": 0}, "count": 1}
    assert types["gpu_1x"]["resources"] == {"CPU": 4, "GPU": 1}
    one_gpu = Request("a trial", 1, 1.0, 1.0)
    assert impossible_on_types(one_gpu, types) is None
    packed = Request("a trial", 16, 1.0, 1.0, placement="STRICT_PACK")
    why = impossible_on_types(packed, types)
    assert why.startswith("a trial packs its 16 workers ({CPU: 16, GPU: 16}) on one node; the "
                          "largest node holds 8 of them (node types: head_cpu {CPU: 0, GPU: 0}, "
                          "gpu_1x {CPU: 4, GPU: 1}"), why  # fmt: skip
    nine = Request("a trial", 1, 1.0, 9.0)
    assert "the largest node has 8 GPUs" in impossible_on_types(nine, types)


def test_a_config_without_stated_resources_or_none_at_all_checks_nothing(tmp_path):
    from distributed.core.capacity import node_types

    assert node_types(str(tmp_path / "absent.yaml")) is None
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("head_node_type: h\navailable_node_types:\n  h: {node_config: {}}\n")
    assert node_types(str(cfg)) is None  # the autoscaler learns it from the cloud: not known here
    cfg.write_text("not: [a, cluster")
    assert node_types(str(cfg)) is None


@pytest.mark.ray
@pytest.mark.timeout(60, func_only=True)
def test_tune_on_an_autoscaling_cluster_without_gpu_node_types_exits_2(
    gesture_shards, ray_session, tmp_path, capsys, monkeypatch
):
    """Joining a cluster (--address) whose head holds a config with CPU node types only: a GPU
    trial is refused naming the node types, before anything waits on it."""
    from distributed import tune

    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text(
        "head_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 0}, node_config: {}}\n"
        "  cpu_8: {resources: {CPU: 8}, max_workers: 4, node_config: {}}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    address = ray_session.get_runtime_context().gcs_address
    argv = ["gesture", "--shards", gesture_shards, "--smoke", "--gpus-per-worker", "1",
            "--address", address, "--storage", str(tmp_path / "runs"), "--name", "gpu"]  # fmt: skip
    line = (
        "a trial needs 1 GPU per worker; no node type of this cluster has a GPU (node types: "
        "head {CPU: 0, GPU: 0}, cpu_8 {CPU: 8, GPU: 0}); drop --gpus-per-worker or run on a GPU "
        "cluster"
    )
    _expect_refused(capsys, tune.main, argv, line, time.monotonic())
    assert not (tmp_path / "runs" / "gpu" / "outer0").exists()
