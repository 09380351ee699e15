"""Can a trial or a fit ever get what it asks for, and what is it waiting for? (No Ray here.)

Ray queues a request that no node can hold (a GPU on a CPU-only cluster, eight GPU workers
packed on one node of four GPUs) for ever, and says so only in its own log ("No available node
types can fulfill ..."), which the console of ``distributed.tune`` and ``distributed.train``
does not show. :func:`impossible` compares one trial's (or fit's) workers with the nodes of a
fixed cluster before anything waits on them, :func:`impossible_on_types` with the node types an
autoscaling cluster can start (:func:`node_types`: the config ``ray up`` leaves on the head
node, where submitted jobs run); :class:`Watch` says every 30 s what a possible
request still waits for, until its first placement group is created. The callers pass Ray's
own views in (``ray.nodes()``, ``ray.available_resources()``,
``ray.util.placement_group_table()``), so this module is tested without a cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

EPS = 1e-9
WAIT_EVERY_S = 30.0


@dataclass(frozen=True)
class Request:
    """What one trial or fit asks for: ``workers`` bundles of ``cpus`` and ``gpus`` each, all on
    one node when ``placement`` is ``STRICT_PACK``. The flags name what the user can change."""

    what: str  # "a trial", "the fit"
    workers: int
    cpus: float
    gpus: float = 0.0
    placement: str = "PACK"
    workers_flag: str = "--workers-per-trial"
    cpus_flag: str = "--cpus-per-worker"
    gpus_flag: str = "--gpus-per-worker"

    def per_worker(self) -> dict[str, float]:
        out = {"CPU": self.cpus}
        if self.gpus > 0:
            out["GPU"] = self.gpus
        return out


def _n(value: float, unit: str) -> str:
    return f"{value:g} {unit}" + ("" if abs(value - 1) < EPS else "s")


def shape(resources: Mapping[str, float]) -> str:
    """``{CPU: 0.5, GPU: 1}``: the CPUs and GPUs of a resource dict (other keys left out)."""
    return "{" + ", ".join(f"{k}: {resources.get(k, 0.0):g}" for k in ("CPU", "GPU")) + "}"


def _fits(node: Mapping[str, float], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` and ``gpus`` one node holds."""
    counts = []
    for key, need in (("CPU", cpus), ("GPU", gpus)):
        if need > 0:
            counts.append(int(float(node.get(key, 0.0)) / need + EPS))
    return min(counts) if counts else 1 << 30


def impossible(
    request: Request, nodes: Sequence[Mapping[str, float]], have: str | None = None
) -> str | None:
    """One line saying why no node set of this fixed cluster can ever hold ``request``, or None.

    ``nodes``: the resources of each alive node (``ray.nodes()``'s ``Resources``); ``have``
    replaces the parenthesis that says what the cluster has (node types instead of nodes)."""
    if request.workers < 1:
        return None
    r, n = request, len(nodes)
    gpus = [float(node.get("GPU", 0.0)) for node in nodes]
    cpus = [float(node.get("CPU", 0.0)) for node in nodes]
    have_gpus = have or f"nodes: {n}, GPUs: {sum(gpus):g}"
    have_cpus = have or f"nodes: {n}, CPUs: {sum(cpus):g}"
    if r.gpus > 0 and max(gpus, default=0.0) <= 0:
        return (
            f"{r.what} needs {_n(r.gpus, 'GPU')} per worker; no node of this cluster has a GPU "
            f"({have_gpus}); drop {r.gpus_flag} or run on a GPU cluster"
        )
    if r.gpus > max(gpus, default=0.0) + EPS:
        return (
            f"{r.what} needs {_n(r.gpus, 'GPU')} per worker; the largest node has "
            f"{_n(max(gpus), 'GPU')} ({have_gpus}); lower {r.gpus_flag}"
        )
    if r.cpus > max(cpus, default=0.0) + EPS:
        return (
            f"{r.what} needs {_n(r.cpus, 'CPU')} per worker; the largest node has "
            f"{_n(max(cpus, default=0.0), 'CPU')} ({have_cpus}); lower {r.cpus_flag}"
        )
    per_node = [_fits(node, r.cpus, r.gpus) for node in nodes]
    if max(per_node, default=0) < 1:
        return (
            f"{r.what} needs {shape(r.per_worker())} per worker on one node; no node has both "
            f"({have or f'{have_gpus}, CPUs: {sum(cpus):g}'}); lower {r.cpus_flag} or "
            f"{r.gpus_flag}"
        )
    total = shape({"CPU": r.workers * r.cpus, "GPU": r.workers * r.gpus})
    if r.placement == "STRICT_PACK" and max(per_node) < r.workers:
        return (
            f"{r.what} packs its {r.workers} workers ({total}) on one node; the largest node "
            f"holds {max(per_node)} of them ({have or f'{have_gpus}, CPUs: {sum(cpus):g}'}); "
            f"lower {r.workers_flag} or run on a cluster with larger nodes"
        )
    if sum(per_node) < r.workers:
        return (
            f"{r.what} needs {r.workers} workers ({total}); the cluster holds {sum(per_node)} "
            f"of them ({have or f'{have_gpus}, CPUs: {sum(cpus):g}'}); lower {r.workers_flag}"
        )
    return None


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # what `ray up` leaves on the head node


def node_types(path: str = BOOTSTRAP_CONFIG) -> dict[str, dict] | None:
    """``{node type: (resources, how many can run)}`` of an autoscaling cluster, from the
    cluster config ``ray up`` copies to the head node (where jobs' drivers run); None where
    there is none, or where a type does not state its resources (the autoscaler then learns them
    from the cloud, which this check cannot)."""
    import os

    import yaml

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
        types = config["available_node_types"]
        head = config.get("head_node_type")
        out = {}
        for name, spec in types.items():
            resources = spec.get("resources")
            if resources is None:
                return None
            count = max(int(spec.get("max_workers", 0)), 1 if name == head else 0)
            if count:
                out[name] = {"resources": dict(resources), "count": count}
        return out or None
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None


def impossible_on_types(request: Request, types: Mapping[str, Mapping]) -> str | None:
    """:func:`impossible` for an autoscaling cluster: every node each type may start counts (up
    to what the request could use), and the message names the node types."""
    nodes = []
    for spec in types.values():
        nodes += [spec["resources"]] * min(int(spec["count"]), max(request.workers, 1))
    listed = ", ".join(f"{name} {shape(spec['resources'])}" for name, spec in types.items())
    why = impossible(request, nodes, have=f"node types: {listed}")
    return why.replace("no node of this cluster", "no node type of this cluster") if why else None


def _matches(bundle: Mapping[str, float], per_worker: Mapping[str, float]) -> bool:
    keys = ("CPU", "GPU")
    return all(abs(float(bundle.get(k, 0.0)) - float(per_worker.get(k, 0.0))) < 1e-6 for k in keys)


def progress(request: Request, groups: Iterable[Mapping]) -> str:
    """``started`` once a placement group with one of ``request``'s workers is created,
    ``waiting`` while one is pending, ``none`` before any exists (the data are being read).

    ``groups``: ``ray.util.placement_group_table().values()``."""
    states = set()
    per_worker = request.per_worker()
    for group in groups:
        bundles = (group.get("bundles") or {}).values()
        if any(_matches(b, per_worker) for b in bundles):
            states.add(group.get("state"))
    if "CREATED" in states:
        return "started"
    return "waiting" if states & {"PENDING", "RESCHEDULING", "PREPARED"} else "none"


def waiting_line(request: Request, free: Mapping[str, float]) -> str:
    """The console line of a request that waits: what one trial needs and what is free."""
    who = "1 trial" if request.what == "a trial" else request.what
    needs = shape({"CPU": request.workers * request.cpus, "GPU": request.workers * request.gpus})
    workers = f" ({request.workers} workers)" if request.workers > 1 else ""
    have = shape(free)
    return f"waiting for resources: {who} needs {needs}{workers}; the cluster has {have} free"


class Watch:
    """A context manager: a daemon thread that emits :func:`waiting_line` every ``every``
    seconds while :func:`progress` says ``waiting``, and ends once it says ``started``."""

    def __init__(
        self,
        request: Request,
        groups: Callable[[], Iterable[Mapping]],
        free: Callable[[], Mapping[str, float]],
        emit: Callable[[str], None],
        every: float = WAIT_EVERY_S,
    ):
        self.request, self.groups, self.free, self.emit, self.every = (
            request,
            groups,
            free,
            emit,
            every,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resources-wait", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                state = progress(self.request, self.groups())
                if state == "started":
                    return
                if state == "waiting" and not self._stop.is_set():
                    self.emit(waiting_line(self.request, self.free()))
            except Exception:  # a lost connection to Ray is said by the run itself
                return

    def __enter__(self) -> Watch:
        if self.request.workers >= 1:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
