"""The training configuration: optimisation fields plus the branch's typed model config.

``TrainConfig.model`` is the branch's frozen model/data configuration (``FacialModelConfig``,
``GestureModelConfig``); it is the one source of C, K, S, L, depth and head wherever a model is
built, trained, evaluated, predicted with or exported, and checkpoints store it as it is (with a
schema version). Overrides (``--config`` files, search spaces) are flat: ``{"lr": 0.01,
"frames": 3, "model": "resnet_tlstm"}`` — each key is a field of :class:`TrainConfig` or of the
branch's model config (``model`` names the network); an unknown key fails loudly, naming it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from branches import get_branch
from branches.base import check_field_types

CONFIG_SCHEMA = 3  # 3: ``precision`` replaces schema 2's ``amp`` (read and converted)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key (and the file)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data.

    Optimisation: ``optimizer`` "sgd" (faces, the paper) or "adam" (bodies, the paper, with
    StepLR(step_size, gamma)); ``precise_bn`` recomputes BatchNorm statistics on the training
    split before each validation and before the model is saved; ``select_metric`` ("uar" or
    "war") picks the best epoch on validation; ``batch_size`` is the global batch, split over the
    workers (see ``distributed.training.loop``); ``precision`` "auto" trains in bf16 on GPUs that
    support
    it, fp16 with a gradient scaler on older GPUs and fp32 on the CPU ("fp32", "fp16", "bf16"
    force one; the CPU runs fp16 and bf16 too, slowly).
    """

    branch: str
    model: object
    optimizer: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 50
    gamma: float = 0.1
    epochs: int = 400
    batch_size: int = 8
    precise_bn: bool = True
    select_metric: str = "uar"
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        b = get_branch(self.branch)
        if not isinstance(self.model, b.config_type):
            raise ConfigError(f"model must be a {b.config_type.__name__}, got {self.model!r}")
        try:
            check_field_types(self)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for name, ok, what in (
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("seed", 0 <= self.seed < 2**31, "in [0, 2**31)"),
        ):
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.select_metric not in ("uar", "war"):
            raise ConfigError(f"select_metric must be uar or war, got {self.select_metric!r}")
        for name in ("epochs", "batch_size", "step_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head(self) -> str:
        """The predicting head (held by the model config)."""
        return self.model.head

    # ------------------------------------------------------------ flat view
    def flat(self) -> dict:
        """One flat dict (model config fields, ``model`` = the network's name) for reports."""
        net = asdict(self.model)
        net["model"] = net.pop("name")
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {**own, **net}

    def override(self, where: str = "config", **flat) -> TrainConfig:
        """A copy with flat overrides routed to this config or to the model config."""
        if not flat:
            return self
        check_keys(self.branch, flat, where)
        own = {f.name for f in fields(self)} - {"branch", "model"}
        mine = {k: v for k, v in flat.items() if k in own}
        net = {("name" if k == "model" else k): v for k, v in flat.items() if k not in own}
        try:
            return replace(self, model=replace(self.model, **net), **mine)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None

    # ------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["model"] = asdict(self.model)
        return {"schema": CONFIG_SCHEMA, **body}

    @classmethod
    def from_dict(cls, obj: dict, where: str = "config") -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys fail, naming the key and ``where``."""
        obj = dict(obj)
        schema = obj.pop("schema", None)
        if schema == 2:  # mixed precision was a switch (on: the GPU default, off: fp32)
            obj["precision"] = "auto" if obj.pop("amp", True) else "fp32"
            schema = CONFIG_SCHEMA
        if schema != CONFIG_SCHEMA:
            raise ConfigError(f"{where}: config schema {schema!r}, this code reads {CONFIG_SCHEMA}")
        b = get_branch(obj.get("branch", ""))
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise ConfigError(f"{where}: unknown config keys {sorted(unknown)}")
        net = dict(obj.pop("model"))
        net_known = {f.name for f in fields(b.config_type)}
        if set(net) - net_known:
            raise ConfigError(f"{where}: unknown model config keys {sorted(set(net) - net_known)}")
        try:
            return cls(model=b.config_type(**net), **obj)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None


def flat_keys(branch: str) -> set[str]:
    """Every key a flat override may name for ``branch``."""
    b = get_branch(branch)
    own = {f.name for f in fields(TrainConfig)} - {"branch", "model"}
    return own | ({f.name for f in fields(b.config_type)} - {"name"}) | {"model"}


def check_keys(branch: str, keys, where: str) -> None:
    unknown = set(keys) - flat_keys(branch)
    if unknown:
        raise ConfigError(
            f"{where}: unknown config keys {sorted(unknown)}; known: {sorted(flat_keys(branch))}"
        )


def default_config(branch: str, where: str = "config", **overrides) -> TrainConfig:
    """The paper's configuration of ``branch``, with flat overrides. Naming another ``model``
    brings its published defaults (e.g. the ResNet + TLSTM baseline's K = 3, 200 epochs and
    p1 + p2 + p3 prediction), which explicit overrides still win over. ``where`` (a file name)
    starts the message of a value that is refused."""
    b = get_branch(branch)
    base = TrainConfig(branch=b.name, model=b.config_type(), **b.train_defaults)
    name = overrides.get("model")
    published = b.model_defaults.get(name, {}) if isinstance(name, str) else {}
    return base.override(where, **{**published, **overrides})


def read_mapping(path: str) -> dict:
    """A JSON or YAML file holding one mapping (numbers such as ``1e-4`` read as numbers)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.load(text, Loader=_yaml_loader()) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError: say which file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{path}: not valid {'YAML' if path.endswith(('yaml', 'yml')) else 'JSON'} ({first})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ConfigFile:
    """What a ``--config`` file holds: flat overrides, and for a preset (``configs/*.yaml``)
    the branch it is for, the protocol its recipe is evaluated on and a description."""

    overrides: dict
    protocol: str | None = None
    description: str = ""


PRESET_KEYS = {"branch", "protocol", "config", "description"}


def load_config_file(path: str | None, branch: str) -> ConfigFile:
    """A JSON/YAML file of flat overrides, or a preset ``{branch, protocol, config: {...}}``;
    every key is checked against ``branch``'s (the message names the file and the key)."""
    if not path:
        return ConfigFile({})
    data = read_mapping(path)
    if "config" in data:
        unknown = set(data) - PRESET_KEYS
        if unknown:
            raise ConfigError(
                f"{path}: unknown preset keys {sorted(unknown)}; known: {sorted(PRESET_KEYS)}"
            )
        if data.get("branch", branch) != branch:
            raise ConfigError(f"{path}: a preset for the {data['branch']} branch, not {branch}")
        overrides = data["config"]
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: config must be a mapping")
        check_keys(branch, overrides, f"{path}: config")
        return ConfigFile(dict(overrides), data.get("protocol"), str(data.get("description", "")))
    check_keys(branch, data, path)
    return ConfigFile(data)


def load_overrides(path: str | None, branch: str) -> dict:
    """Flat overrides from a JSON or YAML file (or a preset's), checked against the branch."""
    return load_config_file(path, branch).overrides


@functools.cache
def _yaml_loader():
    """PyYAML's SafeLoader reads ``1e-4`` as a string (YAML 1.1 wants ``1.0e-4``); this loader
    also reads exponent spellings without a dot as floats."""
    import yaml

    class NumberLoader(yaml.SafeLoader):
        pass

    pattern = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$")
    NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", pattern, list("-+0123456789."))
    return NumberLoader
