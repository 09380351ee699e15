"""The shard tasks of ``distributed.preprocess``: planning shards, one Ray task per shard, and
the small files that make a resume exact.

Items are planned into shards of ``--per-shard`` items, sorted by id (a stable plan, stored as
``plan.json``: a resume into an output planned from other items or options is refused). One Ray
task of 1 CPU turns one planned shard into one Parquet file (temporary name, then rename) and a
summary file written last, whose presence marks the shard as finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from branches import get_branch
from datasets import shards, storage
from datasets.records import BadInput, SourceItem
from distributed.core.runtime import cluster_cpus, set_opencv_threads, task_cpus

PLAN = "plan.json"
WINDOW_PER_CPU = 4  # shard tasks in flight per cluster CPU
SUMMARY_SUFFIX = ".summary.json"


def plan_shards(items: list[SourceItem], per_shard: int) -> list[list[SourceItem]]:
    ordered = sorted(items, key=lambda it: it.id)
    return [ordered[i : i + per_shard] for i in range(0, len(ordered), per_shard)]


def check_plan(out: str, plan_doc: dict) -> None:
    """Refuse to resume into an output made from different items or options."""
    path = storage.join(out, PLAN)
    if storage.exists(path):
        old = json.loads(storage.read_bytes(path))
        if old != plan_doc:
            raise BadInput(
                out,
                "holds shards planned from other items or options; use a new --out "
                "(or delete this folder) to start over",
            )
    else:
        storage.atomic_write_bytes(path, json.dumps(plan_doc, sort_keys=True).encode())


def run_shard(task: dict) -> dict:
    """Ray task: process one planned shard and write it; returns a one-row summary."""
    threads = set_opencv_threads(task_cpus())
    branch = get_branch(task["branch"])
    out, index = task["out"], int(task["shard"])
    items = [SourceItem(**d) for d in json.loads(task["items"])]
    classes = json.loads(task["classes"])
    opts = branch.options_type(**json.loads(task["options"]))
    label_of = {name: i for i, name in enumerate(classes)}
    context = branch.worker_context(opts)
    rows, errors, centre, notes = [], [], [], []
    for item in items:
        try:
            said: list[str] = []
            row = branch.process_item(item, label_of[item.label], opts, context, said)
            notes += [[item.path, n] for n in said]
            # with --detector none every video is centre-cropped on purpose: nothing to report
            if getattr(row, "centre_cropped", False) and getattr(opts, "detector", "") != "none":
                centre.append(item.path)
            rows.append(row)
        except BadInput as e:
            errors.append([e.path, e.reason])
        except Exception as e:  # one bad item never kills the job: count it, report it
            errors.append([item.path, f"{type(e).__name__}: {e}"])
    if rows:
        shards.write_shard(branch.table(rows), shards.shard_path(out, index))
    summary = {
        "shard": index,
        "written": len(rows),
        "errors": errors,
        "centre_cropped": centre,
        "notes": notes,
    }
    # The summary is written last: its presence marks the shard as finished for a resume.
    storage.atomic_write_bytes(summary_path(out, index), json.dumps(summary).encode())
    return {"shard": index, "written": len(rows), "failed": len(errors), "threads": threads}


def summary_path(out: str, index: int) -> str:
    return shards.shard_path(out, index) + SUMMARY_SUFFIX


def finished_shards(out: str) -> str:
    """How many planned shards of ``out`` are finished (their summary files are there)."""
    try:
        plan = json.loads(storage.read_bytes(storage.join(out, PLAN)))
    except (FileNotFoundError, ValueError):
        return "no shard finished yet"
    n = len(plan["shards"])
    done = sum(storage.exists(summary_path(out, i)) for i in range(n))
    return f"{done} of {n} shards finished and kept in {out}"


def run_tasks(todo: list[dict]) -> Iterator[dict]:
    """Run :func:`run_shard` on every planned shard as plain Ray tasks of 1 CPU; yields each
    task's summary row as it finishes (in finishing order).

    At most ``WINDOW_PER_CPU`` tasks per cluster CPU are in flight (bounded driver memory
    whatever the number of shards; the queued ones keep a cluster's autoscaler asking for
    nodes). Plain tasks, not a Ray Data ``map``: on 2 CPUs Ray Data left each worker idle
    ~0.16 s between its ~0.36 s tasks, and 2 CPUs ran 1.1-1.35x one CPU; plain tasks run
    back to back (``benchmarks/pipeline.py``). A task whose worker dies (a decoder crash) is
    retried twice; a task that fails otherwise (its shard cannot be written) stops the job with
    a :class:`BadInput` naming the shard; finished shards are kept for a resume. Interrupted
    (``KeyboardInterrupt``) or closed early, it cancels the tasks in flight, killing their
    workers.
    """
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(run_shard)
    window = max(4, int(WINDOW_PER_CPU * cluster_cpus()))
    queue = iter(todo)
    shard_of: dict = {}  # in-flight task -> the path of the shard it writes

    def submit() -> None:
        task = next(queue, None)
        if task is not None:
            shard_of[remote.remote(task)] = shards.shard_path(task["out"], int(task["shard"]))

    for _ in range(window):
        submit()
    try:
        while shard_of:
            ready, _ = ray.wait(list(shard_of), num_returns=1)
            path = shard_of.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                for ref in shard_of:
                    ray.cancel(ref)
                cause = getattr(err, "cause", None) or err
                raise BadInput(
                    path,
                    f"this shard failed ({type(cause).__name__}: {cause}); finished shards are "
                    "kept, and the same command resumes after the cause is fixed",
                ) from None
            submit()
            yield row
    except (KeyboardInterrupt, GeneratorExit):  # stopped (Ctrl-C, SIGTERM) or closed early
        for ref in shard_of:
            ray.cancel(ref, force=True)  # a task stuck in a read stops too
        raise
