"""Precise BatchNorm: the eval-mode statistics are the mean of one pass's batch statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from datasets.manifest import read_manifest, read_protocol
from distributed.core.config import default_config
from distributed.training.launch import data_info
from distributed.training.loop import recompute_bn_stats
from distributed.training.ray_data import RayShard, fold_dataset, make_collate
from distributed.training.steps import build, model_inputs

pytestmark = pytest.mark.timeout(180)


def _reference_stats(cfg, model, ds):
    """Slow reference: capture every BN layer's input per batch, average mean and unbiased var."""
    net = copy.deepcopy(model).train()
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    seen = {id(m): [] for m in bns}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: seen[id(mod)].append(inp[0].detach()))
        for m in bns
    ]
    cpu = torch.device("cpu")
    with torch.no_grad():
        for batch in ds.iter_torch_batches(
            batch_size=cfg.batch_size, collate_fn=make_collate(cfg, True, 0)
        ):
            net(model_inputs(cfg, batch, cpu))
    for h in hooks:
        h.remove()
    out = []
    for m in bns:
        xs = seen[id(m)]
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs])
        vars_ = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs])
        out.append((means.mean(0), vars_.mean(0), len(xs)))
    return out


def test_precise_bn_replaces_running_stats_by_the_pass_average(gesture_shards, ray_session):
    manifest = read_manifest(gesture_shards)
    ids = read_protocol(gesture_shards, manifest)[1].fold(0).inner[0].train
    cfg = default_config(
        "gesture", rep_size=16, rep_length=24, width=8, se_reduction=4, batch_size=5
    )
    torch.manual_seed(0)
    model = build(cfg, data_info(manifest))
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns
    for m in bns:  # stale statistics, as after an epoch of moving weights
        m.running_mean.fill_(3.0)
        m.running_var.fill_(7.0)
    ds = fold_dataset(gesture_shards, "gesture", ids).materialize()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = _reference_stats(cfg, model, ds)

    n = recompute_bn_stats(cfg, model, RayShard(ds.iterator()), torch.device("cpu"), epoch=0)

    assert n == -(-len(ids) // cfg.batch_size) and n == ref[0][2] and n > 1
    for m, (mean, var, _) in zip(bns, ref):
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, var, rtol=1e-5, atol=1e-6)
        assert m.momentum == 0.1  # restored for training
    # only BN buffers changed; the weights are untouched
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
