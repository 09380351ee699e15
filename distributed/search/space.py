"""Search spaces for the Tune driver, with the paper's values as the first point.

A space is a dict ``{key: spec}`` over flat config keys (see ``distributed.core.config``), where a
spec is one of ``{"choice": [...]}``, ``{"uniform": [lo, hi]}``, ``{"loguniform": [lo, hi]}``,
``{"int": [lo, hi]}`` or a plain value (fixed). The built-in spaces are the branches' own
(``branches/*.py``). A YAML/JSON file given with ``--space`` holds ``space`` (replacing
entries; ``replace: true`` drops the built-in ones), optional ``start`` (points to evaluate
first) and ``fixed`` (values every trial uses). The whole file is checked here, before Ray
starts: every message names the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from branches import get_branch
from distributed.core.config import ConfigError, check_keys, default_config, read_mapping

SPEC_KINDS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class SearchSpace:
    space: dict
    start: list = field(default_factory=list)
    fixed: dict = field(default_factory=dict)

    def tune_space(self) -> dict:
        """Ray Tune sampling objects (OptunaSearch converts them to Optuna distributions)."""
        from ray import tune

        out = {}
        for name, spec in self.space.items():
            if not isinstance(spec, dict):
                out[name] = spec
            elif "choice" in spec:
                out[name] = tune.choice(list(spec["choice"]))
            elif "uniform" in spec:
                out[name] = tune.uniform(*spec["uniform"])
            elif "loguniform" in spec:
                out[name] = tune.loguniform(*spec["loguniform"])
            else:
                lo, hi = spec["int"]
                out[name] = tune.randint(lo, hi + 1)
        return out

    def optuna_distributions(self) -> dict:
        """Optuna distributions of the searched entries (for reports and importances)."""
        import optuna.distributions as d

        out = {}
        for name, spec in self.space.items():
            if not isinstance(spec, dict):
                continue
            if "choice" in spec:
                out[name] = d.CategoricalDistribution(list(spec["choice"]))
            elif "uniform" in spec:
                out[name] = d.FloatDistribution(*spec["uniform"])
            elif "loguniform" in spec:
                out[name] = d.FloatDistribution(*spec["loguniform"], log=True)
            else:
                out[name] = d.IntDistribution(*spec["int"])
        return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_spec(name: str, spec, where: str) -> None:
    """One entry's spec is well formed (a clear error naming ``where`` and the key otherwise)."""
    if not isinstance(spec, dict):
        return  # a plain value: fixed
    if len(spec) != 1 or next(iter(spec)) not in SPEC_KINDS:
        raise ConfigError(
            f"{where}: {name}: a spec is one of {list(SPEC_KINDS)} (or a plain value), got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {name}: choice needs a non-empty list, got {args!r}")
        return
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise ConfigError(f"{where}: {name}: {kind} needs [low, high] numbers, got {args!r}")
    lo, hi = args
    if not lo < hi:
        raise ConfigError(f"{where}: {name}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: {name}: loguniform needs low > 0, got {args!r}")
    if kind == "int" and not all(float(a).is_integer() for a in args):
        raise ConfigError(f"{where}: {name}: int needs whole numbers, got {args!r}")


def _values(spec) -> list:
    """Values to try when validating a spec against the config (bounds and choices)."""
    if not isinstance(spec, dict):
        return [spec]
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return list(args)
    return [int(a) for a in args] if kind == "int" else list(args)


def load_space(
    branch: str, path: str | None = None, smoke: bool = False, base_overrides: dict | None = None
) -> SearchSpace:
    """The built-in space of ``branch`` (or its smoke variant), overridden by a YAML/JSON file,
    checked entry by entry: keys, spec forms, and every choice / bound as a valid config."""
    b = get_branch(branch)
    space = dict(b.smoke_space if smoke else b.space)
    start = [dict(p) for p in (b.smoke_start if smoke else b.start)]
    fixed: dict = {}
    where = path or f"built-in {branch} space"
    if path:
        doc = read_mapping(path)
        unknown = set(doc) - {"space", "start", "fixed", "replace"}
        if unknown:
            raise ConfigError(
                f"{path}: unknown top-level keys {sorted(unknown)}; known: "
                "['fixed', 'replace', 'space', 'start']"
            )
        for key, kind in (("space", dict), ("fixed", dict), ("start", list)):
            if key in doc and not isinstance(doc[key], kind):
                raise ConfigError(f"{path}: {key} must be a {kind.__name__}")
        space = dict(doc["space"]) if doc.get("replace") else {**space, **doc.get("space", {})}
        start = doc.get("start", start)
        fixed = doc.get("fixed", {})
        if not all(isinstance(p, dict) for p in start):
            raise ConfigError(f"{path}: start must be a list of mappings")
    check_keys(branch, space, f"{where}: space")
    check_keys(branch, fixed, f"{where}: fixed")
    for name, spec in space.items():
        check_spec(name, spec, f"{where}: space")
    # A start point may only name searched entries; drop what the file removed from the space.
    start = [{k: v for k, v in p.items() if k in space} for p in start]
    start = [p for p in start if len(p) == len(space)]
    base = default_config(branch, **{**(base_overrides or {}), **fixed})
    for name, spec in space.items():
        for value in _values(spec):
            base.override(where=f"{where}: space: {name}={value!r}", **{name: value})
    for k, point in enumerate(start):
        base.override(where=f"{where}: start[{k}]", **point)
    return SearchSpace(space=space, start=start, fixed=fixed)


def within(spec, value) -> bool:
    """Whether ``value`` is a point of ``spec``."""
    if not isinstance(spec, dict):
        return value == spec
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return value in args
    if not _number(value):
        return False
    return args[0] <= value <= args[1] and (kind != "int" or float(value).is_integer())


def with_first_point(space: SearchSpace, cfg) -> SearchSpace:
    """The space with ``cfg``'s values of the searched keys evaluated first (when they are
    points of the space), e.g. a paper preset's recipe."""
    flat = cfg.flat()
    point = {k: flat[k] for k in space.space}
    if not all(within(space.space[k], v) for k, v in point.items()) or point in space.start:
        return space
    return SearchSpace(space.space, [point, *space.start], space.fixed)
