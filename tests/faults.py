"""Fault injection for training tests, from the outside: wrappers of the real training loop.

Ray workers import this module by name (the repository root is on their ``PYTHONPATH``), so a
test passes ``loop=faults.failing_once(...)`` or ``loop=faults.dumping_params(...)`` to
``fit_folds``; production code has no test switches. Each wrapper takes the loop's arguments
(``config``, ``host``) and runs ``distributed.training.loop.train_folds``.
"""

from __future__ import annotations

import functools
import os

import torch


def _fail_once(config: dict, host, *, epoch: int, rank: int, marker: str) -> None:
    """Run the real loop, killing this worker process once when ``rank`` starts training
    epoch ``epoch`` (the marker file records that it happened)."""
    from distributed.training import loop

    real = loop.run_epoch

    def run_epoch(*args, **kwargs):
        if kwargs.get("train") and kwargs.get("epoch") == epoch and host.rank == rank:
            if not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(f"failed at epoch {epoch} rank {rank}\n")
                os._exit(1)
        return real(*args, **kwargs)

    loop.run_epoch = run_epoch
    try:
        loop.train_folds(config, host)
    finally:
        loop.run_epoch = real


def failing_once(epoch: int, rank: int, marker: str):
    return functools.partial(_fail_once, epoch=epoch, rank=rank, marker=marker)


def _dump_params(config: dict, host, *, directory: str) -> None:
    """Run the real loop, then save every fold's final parameters of this rank."""
    from distributed.training import loop

    models = []
    real = host.prepare_model

    def prepare_model(model):
        wrapped = real(model)
        models.append(wrapped)
        return wrapped

    host.prepare_model = prepare_model
    loop.train_folds(config, host)
    for fold, model in enumerate(models):
        net = model.module if hasattr(model, "module") else model
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save(state, os.path.join(directory, f"fold{fold}-rank{host.rank}.pt"))


def dumping_params(directory: str):
    return functools.partial(_dump_params, directory=directory)


def _raise_at(config: dict, host, *, call: int) -> None:
    """Run the real loop, raising in the ``call``-th training epoch (counted from 0 over all
    folds of this run): a crash of the process that trains, as in local mode."""
    from distributed.training import loop

    real = loop.run_epoch
    calls = [0]

    def run_epoch(*args, **kwargs):
        if kwargs.get("train"):
            calls[0] += 1
            if calls[0] - 1 == call:
                raise RuntimeError(f"injected crash in training epoch call {call}")
        return real(*args, **kwargs)

    loop.run_epoch = run_epoch
    try:
        loop.train_folds(config, host)
    finally:
        loop.run_epoch = real


def raising_at(call: int):
    return functools.partial(_raise_at, call=call)
