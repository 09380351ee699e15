"""CPU-side guards of the GPU path: what would crash, wait or differ on GPUs, caught without one.

- every tensor the training loop hands to a collective is on the worker's device, and the
  process-group backend used on GPUs has a backend for every device such a tensor can be on
  (NCCL alone has no CPU backend: a CPU tensor in an all-reduce killed every 2-GPU run);
- the loop runs without Ray on a plain ``torch.distributed`` group (two processes, gloo), with
  the global batch split over the workers and validation partitioned, every row scored once;
- a training step does not wait for the device (no ``.item()``, ``float()``, ``.cpu()`` per step);
- GPU trials plan their concurrency and placement from GPUs, fractions included.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist

from datasets import shards
from datasets.manifest import read_manifest, read_protocol
from distributed.core.config import default_config
from distributed.training.launch import data_info, outer_fold_spec
from distributed.training.loop import process_group_backend

pytestmark = pytest.mark.timeout(300)

SMALL = dict(rep_size=16, rep_length=24, width=8, se_reduction=4, batch_size=6, lr=1e-2, epochs=2)


def _backend_map(backend: str) -> dict:
    from torch.distributed.distributed_c10d import BackendConfig

    return BackendConfig(backend).get_device_backend_map()


def test_the_gpu_backend_string_serves_cpu_and_cuda_tensors():
    """On GPUs the worker group's process group must take CUDA tensors (NCCL) and CPU ones
    (gloo); "nccl" alone has no CPU backend, the crash this replaces."""
    assert _backend_map(process_group_backend(True)) == {"cpu": "gloo", "cuda": "nccl"}
    assert "cpu" not in _backend_map("nccl")
    assert _backend_map(process_group_backend(False))["cpu"] == "gloo"


def _streamed_inner_split(root: str):
    """(manifest, inner split 0 of outer fold 0, its folds streamed: train0 split, val0 not)."""
    from branches import get_branch
    from distributed.training.stream import StreamedFold

    manifest = read_manifest(root)
    key, protocol = read_protocol(root, manifest)
    spec = outer_fold_spec(protocol, key, 0, 0)
    columns = get_branch("gesture").columns
    groups = shards.shard_row_groups(root, columns)
    folds = {
        "train0": StreamedFold.plan(groups, columns, spec.train, split=True),
        "val0": StreamedFold.plan(groups, columns, spec.val, split=False),
    }
    return manifest, spec, folds


class PlainHost:
    """The loop's host on a plain torch.distributed group: no Ray anywhere."""

    def __init__(self, rank: int, world: int, folds: dict):
        self.rank, self.world, self.device = rank, world, torch.device("cpu")
        self.folds, self.reports = folds, []

    def shard(self, key):
        return self.folds[key].shard(self.rank, self.world)

    def prepare_model(self, model):
        return torch.nn.parallel.DistributedDataParallel(model.to(self.device))

    def restore(self):
        return None

    def report(self, metrics, directory):
        self.reports.append(metrics)


def _worker(rank: int, world: int, store_path: str, config: dict, folds: dict, out: str):
    from distributed.training import loop

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world)  # fmt: skip
    host = PlainHost(rank, world, folds)
    handled = set(_backend_map(process_group_backend(True)))
    seen = []
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        seen.append([str(tensor.device), tensor.device.type in handled])
        return real(tensor, *args, **kwargs)

    dist.all_reduce = all_reduce
    try:
        loop.train_folds(config, host)
    finally:
        dist.all_reduce = real
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"collectives": seen, "history": host.reports, "device": str(host.device)}, f)
    dist.destroy_process_group()


def test_the_loop_on_a_plain_process_group_hands_collectives_device_tensors(
    gesture_shards, tmp_path
):
    """Two processes, gloo, no Ray: the real loop's collectives all get tensors on the worker's
    device; the global batch is split (3 rows per worker); the validation counts sum to the
    split's size exactly (each row scored once) and both ranks report the same metrics."""
    import torch.multiprocessing as mp

    manifest, spec, folds = _streamed_inner_split(gesture_shards)
    cfg = default_config("gesture", **SMALL)
    config = {
        "train": cfg.to_dict(),
        "data": data_info(manifest).to_json(),
        "folds": [{"train": "train0", "val": "val0", "fold": spec.trained_on.to_json()}],
        "threads": 1,
        "model_writer": None,
    }
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), config, folds, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["collectives"], "the loop made no collective call"
        assert all(device == r["device"] and handled for device, handled in r["collectives"])
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [m["epoch"] for m in h0] == [0, 1]
    assert all(m["batch_per_worker"] == 3 and m["workers"] == 2 for m in h0)
    assert all(m["val_n"] == len(spec.val) for m in h0)  # a partition: every row once
    assert all(m["train_n"] == 2 * (len(spec.train) // 2) for m in h0)
    for a, b in zip(h0, h1):
        assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"]


@pytest.mark.parametrize("branch", ["gesture", "facial"])
def test_a_training_epoch_does_not_wait_for_the_device_per_step(
    branch, gesture_shards, facial_pair_shards
):
    """Reading a tensor's value on the host (``.item()``, ``float()``, ``.cpu()``, ``.numpy()``,
    ``.tolist()``) waits for the GPU; the epoch does it a fixed number of times (the stats'
    read-out at its end), not once per step."""
    from branches import get_branch
    from distributed.training import loop
    from distributed.training.steps import build
    from distributed.training.stream import StreamedFold

    root = gesture_shards if branch == "gesture" else facial_pair_shards
    manifest = read_manifest(root)
    columns = get_branch(branch).columns
    groups = shards.shard_row_groups(root, columns)
    ids = shards.read_table(root, columns=["id"])["id"].to_pylist()
    fold = StreamedFold.plan(groups, columns, ids, split=True)
    small = SMALL if branch == "gesture" else dict(clips=1, frames=2, lstm1=8, lstm2=4, lr=1e-2)
    cfg = default_config(branch, **small)
    heads = get_branch(branch).heads
    counts, paused = {}, [False]
    names = ("item", "__float__", "__int__", "cpu", "numpy", "tolist", "__bool__")
    real = {n: getattr(torch.Tensor, n) for n in names}

    def counting(name):
        def method(self, *args, **kwargs):
            if not paused[0]:
                counts[name] = counts.get(name, 0) + 1
            return real[name](self, *args, **kwargs)

        return method

    def uncounted(step):
        # Adam reads its step counters with .item(); they stay on the CPU on a GPU too (not
        # "capturable"), so reading them does not wait for the device
        def wrapped(*args, **kwargs):
            paused[0] = True
            try:
                return step(*args, **kwargs)
            finally:
                paused[0] = False

        return wrapped

    per_batch = {}
    for batch in (2, 8):  # 4x the steps: the count must not grow with them
        torch.manual_seed(0)
        model = build(cfg, data_info(manifest))
        opt, _ = loop.make_optimizer(cfg, model)
        opt.step = uncounted(opt.step)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        counts.clear()
        for n in names:
            setattr(torch.Tensor, n, counting(n))
        try:
            stats = loop.run_epoch(cfg, model, fold.shard(), heads, len(manifest.classes),
                                   torch.device("cpu"), train=True, epoch=0, batch_size=batch,
                                   opt=opt, scaler=scaler)  # fmt: skip
        finally:
            for n in names:
                setattr(torch.Tensor, n, real[n])
        assert stats.count == len(ids)
        per_batch[batch] = dict(counts)
    assert per_batch[2] == per_batch[8], per_batch


def test_gpu_trials_plan_concurrency_and_placement_from_gpus():
    from distributed.core.commands import UsageError
    from distributed.search.driver import plan_concurrency
    from distributed.training.launch import Resources, trial_placement

    # a 0-CPU head and 4 nodes x 8 GPUs: trials by GPUs, not "1 trial" from the CPUs
    assert plan_concurrency(4 * 32, 8, 1.0, None, total_gpus=32, gpus_per_worker=1) == 4
    assert plan_concurrency(4 * 32, 8, 1.0, 8, total_gpus=32, gpus_per_worker=1) == 4
    # fractional GPUs: two 1-worker trials share each GPU
    assert plan_concurrency(64, 1, 1.0, 100, total_gpus=4, gpus_per_worker=0.5) == 8
    # without --max-concurrent at most a quarter of the trials run at once (TPE feedback)
    assert plan_concurrency(64, 1, 1.0, None, total_gpus=8, gpus_per_worker=1, samples=20) == 5
    # an autoscaling cluster: the cap decides, not what is up now (nothing, at first)
    assert plan_concurrency(0, 8, 1.0, None, True, total_gpus=0, gpus_per_worker=1,
                            samples=40) == 10  # fmt: skip
    with pytest.raises(UsageError, match="needs 8 GPUs, the cluster has 4"):
        plan_concurrency(64, 8, 1.0, None, total_gpus=4, gpus_per_worker=1)
    # a trial's resources carry the GPU fraction
    assert Resources(0, 0.25, 2.0).per_worker() == {"CPU": 2.0, "GPU": 0.25}
    # 8 GPU workers: packed on one node when one can hold them, spread (and said) otherwise
    assert trial_placement(8, 1, [8, 8, 4], False)[0] == "STRICT_PACK"
    strategy, note = trial_placement(8, 1, [4, 4, 4, 4], False)
    assert strategy == "PACK" and "span nodes" in note
    assert trial_placement(8, 1, [], True)[0] == "STRICT_PACK"
    assert trial_placement(1, 1, [1], False)[0] == "PACK"


def test_on_a_gpu_the_model_is_channels_last_with_sync_bn_for_small_per_worker_batches():
    """What the loop does to a model for CUDA (checked on the CPU: neither step needs a GPU)."""
    from torch.nn import SyncBatchNorm

    from distributed.training.loop import Pinned, for_device, make_collate

    cfg = default_config("facial", clips=1, frames=2, lstm1=8, lstm2=4)

    def model():
        from branches import DataInfo
        from distributed.training.steps import build

        return build(cfg, DataInfo(("a", "b"), {"size": 32}), pretrained=False)

    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def synced(m):
        return any(isinstance(x, SyncBatchNorm) for x in m.modules())

    small = for_device(model(), cuda, world=2, batch=8)
    assert synced(small)
    conv = next(m for m in small.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not synced(for_device(model(), cuda, world=2, batch=16))  # large enough per worker
    assert not synced(for_device(model(), cuda, world=1, batch=8))  # nothing to synchronise
    assert not synced(for_device(model(), cpu, world=2, batch=8))  # GPU-only in PyTorch
    # batches bound for a GPU are pinned on the feed's thread (for non-blocking copies)
    assert isinstance(make_collate(cfg, True, 0, frozenset(), cuda), Pinned)
    assert not isinstance(make_collate(cfg, True, 0, frozenset(), cpu), Pinned)


def test_precision_is_resolved_per_device_and_old_configs_convert():
    from distributed.core.config import ConfigError, TrainConfig
    from distributed.training.loop import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="precision must be one of"):
        default_config("gesture", precision="fp8")
    old = default_config("gesture").to_dict()
    del old["precision"]
    for amp, precision in ((True, "auto"), (False, "fp32")):
        blob = {**old, "schema": 2, "amp": amp}
        assert TrainConfig.from_dict(blob).precision == precision


class RecordingHost(PlainHost):
    """World 1, no process group: records which epochs came with a checkpoint directory."""

    def __init__(self, folds):
        super().__init__(0, 1, folds)
        self.saved = []

    def prepare_model(self, model):
        return model

    def report(self, metrics, directory):
        super().report(metrics, directory)
        self.saved.append(directory is not None)


def test_checkpoints_on_improvement_every_n_epochs_and_at_the_last(gesture_shards):
    """Not every epoch (at GPU speed the write would dominate short epochs): an epoch is saved
    when it improved the fold's best validation score, every ``checkpoint_every`` epochs, and at
    the fold's last epoch."""
    from distributed.training import loop

    manifest, spec, folds = _streamed_inner_split(gesture_shards)
    cfg = default_config("gesture", **{**SMALL, "epochs": 12, "lr": 0.05})
    host = RecordingHost(folds)
    config = {
        "train": cfg.to_dict(),
        "data": data_info(manifest).to_json(),
        "folds": [{"train": "train0", "val": "val0", "fold": spec.trained_on.to_json()}],
        "threads": 1,
        "model_writer": None,
        "checkpoint_every": 5,
    }
    threads = torch.get_num_threads()
    try:
        loop.train_folds(config, host)
    finally:
        torch.set_num_threads(threads)
    improved = [m["best_epoch"] == m["epoch"] for m in host.reports]
    expected = [imp or e in (4, 9, 11) for e, imp in enumerate(improved)]
    assert host.saved == expected
    assert not all(host.saved)  # the learning rate is high enough for some epochs not to improve
