"""Prediction as a Ray Data batch-inference job: the same results as ``predict_local``.

Decoding and face detection run in parallel Ray tasks (``_prepare_batch``); a prepared item
travels as its one-row shard table (Arrow IPC bytes); the model runs in an actor pool
(``map_batches`` with a callable class), each actor scoring its batch through the same
:class:`~distributed.inference.predictor.Predictor` as local prediction.

On ``device="cuda"`` every actor asks Ray for a GPU (or a fraction of one, so that several
actors share it, see :func:`actor_resources`); Ray then makes that GPU the actor's only visible
``cuda`` device. The driver loads the model on the CPU only (to read its branch and
preprocessing), so it needs no GPU itself.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from branches import DataInfo, get_branch
from distributed.core import commands
from distributed.inference.outputs import failed, ok, reason
from distributed.inference.predictor import Predictor, Prepared, prepare_path
from distributed.training.checkpoint import load_model


def _prepare_batch(batch: dict, branch: str, data: dict) -> dict:
    """Ray Data task: decode + detect + crop (no model)."""
    b, info = get_branch(branch), DataInfo.from_json(data)
    context = b.worker_context(b.options_type(**info.options))
    cols = {k: [] for k in ("order", "id", "path", "error", "table", "meta")}
    for order, item_id, path in zip(batch["order"], batch["id"], batch["path"]):
        error, table, meta = "", b"", "{}"
        try:
            prep = prepare_path(b, info, str(path), context)
            table = prep.to_ipc()
            meta = json.dumps(
                {
                    "fps": prep.fps,
                    "extras": prep.extras,
                    "warnings": list(prep.warnings),
                }
            )
        except Exception as err:
            error = reason(err)
        for k, v in zip(cols, (int(order), str(item_id), str(path), error, table, meta)):
            cols[k].append(v)
    return {k: np.array(v, dtype=object) if k == "table" else np.array(v) for k, v in cols.items()}


def actor_resources(device: str, gpus_per_actor: float | None = None) -> dict:
    """Ray resources of one model actor (``map_batches`` keywords): a CPU, plus on a CUDA device
    ``gpus_per_actor`` GPUs (default 1). A fraction lets several actors share one GPU (each holds
    its own copy of the model: mind the GPU's memory); above 1 it must be a whole number."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise commands.UsageError(
            f"--device {device!r} is not a device (cpu, cuda, cuda:1...)"
        ) from None
    if kind != "cuda":
        if gpus_per_actor:
            raise commands.UsageError(
                f"--gpus-per-actor needs --device cuda (got --device {device})"
            )
        return {"num_cpus": 1}
    gpus = 1.0 if gpus_per_actor is None else float(gpus_per_actor)
    if not gpus > 0 or (gpus > 1 and not gpus.is_integer()):
        raise commands.UsageError(
            f"--gpus-per-actor must be a fraction in (0, 1] or a whole number, got {gpus_per_actor}"
        )
    return {"num_cpus": 1, "num_gpus": gpus}


def actor_device(device: str) -> str:
    """The device an actor loads the model on: ``cuda`` (Ray shows each actor only the GPUs it
    was given, as ``cuda:0``...), whatever index ``device`` names; other devices unchanged."""
    return "cuda" if torch.device(device).type == "cuda" else device


class ModelActor:
    """Ray Data ``map_batches`` callable class: the model is loaded once per actor."""

    def __init__(self, checkpoint, clips: int | None, device: str):
        import ray

        data = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        torch.set_num_threads(1)
        self.predictor = Predictor.from_checkpoint(data, device, clips)

    def __call__(self, batch: dict) -> dict:
        ready = []
        for i in range(len(batch["id"])):
            if batch["error"][i]:
                continue
            meta = json.loads(batch["meta"][i])
            table = Prepared.table_from_ipc(batch["table"][i])
            ready.append(
                (
                    i,
                    Prepared(
                        str(batch["path"][i]),
                        table,
                        meta["fps"],
                        meta["extras"],
                        tuple(meta["warnings"]),
                    ),
                )
            )
        preds = dict(
            zip([i for i, _ in ready], self.predictor.predict_tables([p for _, p in ready]))
        )
        results = []
        for i in range(len(batch["id"])):
            item_id, path = str(batch["id"][i]), str(batch["path"][i])
            if i in preds:
                results.append(json.dumps(ok(item_id, path, preds[i])))
            else:
                results.append(json.dumps(failed(item_id, path, str(batch["error"][i]))))
        return {"order": batch["order"], "result": np.array(results)}


def predict_ray(
    checkpoint: bytes,
    items: list[tuple[str, str]],
    *,
    clips: int | None = None,
    device: str = "cpu",
    actors: int = 1,
    batch_size: int = 8,
    address: str | None = None,
    gpus_per_actor: float | None = None,
) -> list[dict]:
    """The same predictions as :func:`distributed.inference.outputs.predict_local`, on Ray Data.

    ``device`` is where the actors run the model (a CUDA device asks Ray for GPUs, see
    :func:`actor_resources`); this process reads the checkpoint on the CPU only."""
    from distributed.core.runtime import init_ray, ray_data_console_quiet

    resources = actor_resources(device, gpus_per_actor)
    ray = init_ray(address)
    ray_data_console_quiet()
    mf = load_model(checkpoint, "cpu")
    ref = ray.put(checkpoint)
    rows = [{"order": i, "id": item_id, "path": path} for i, (item_id, path) in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * actors)))
    ds = ds.map_batches(
        _prepare_batch,
        batch_size=batch_size,
        num_cpus=0.5,
        fn_kwargs={"branch": mf.config.branch, "data": mf.data.to_json()},
    )
    ds = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={"checkpoint": ref, "clips": clips, "device": actor_device(device)},
        batch_size=batch_size,
        concurrency=actors,
        **resources,
    )
    results = sorted(ds.iter_rows(), key=lambda r: int(r["order"]))
    return [json.loads(r["result"]) for r in results]
