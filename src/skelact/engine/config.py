"""Experiment configuration: dataclasses loaded from YAML (``yaml.safe_load``), overridable by ``--set``.

The dataclass defaults are the built-in main job (CTR-GCN + FR-Head on the synthetic dataset).
A YAML file may name a ``base:`` file (relative to itself) whose values it overrides, so experiment
families share one file and variants (streams, seeds, heads) are overrides, not copies.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import SkelactError


@dataclass
class DataConfig:
    path: str = "data/synthetic"  # dataset store directory (see `skelact prepare`)
    # built-in data to create at `path` when it is missing: "auto" = the synthetic benchmark, but only at
    # the default path (a mistyped path is an error, not a new dataset); "synthetic" = at any path; "" = never
    generate: str = "auto"
    split: str = "xsub"  # split protocol of the store
    protocol: str = "ntu"  # clip protocol: ntu | ucla | none
    window: int = 32  # frames per clip after resampling
    stream: str = "j"  # j | b | jm | bm
    num_persons: int = 0  # 0 = the store's maximum
    repeat: int = 1  # passes over the training list per epoch (NW-UCLA recipe: 5)
    val_fraction: float = 0.0  # share of each training class held out for validation
    workers: int = 0  # DataLoader worker processes


@dataclass
class ModelConfig:
    name: str = "ctrgcn"
    options: dict = field(default_factory=dict)  # extra keyword arguments of the model


@dataclass
class HeadConfig:
    name: str = "frhead"  # frhead | stdcl
    options: dict = field(default_factory=dict)  # keyword arguments of the head (w_cl, lambdas, ...)


@dataclass
class OptimConfig:
    epochs: int = 8
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-4
    schedule: str = "step"  # step | cosine
    milestones: list = field(default_factory=lambda: [6])
    gamma: float = 0.1
    warmup_epochs: int = 1


@dataclass
class Config:
    name: str = ""  # run name; empty: "<dataset dir>-<model>-<heads>"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    heads: list[HeadConfig] = field(default_factory=lambda: [HeadConfig()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    sync_bn: bool = True  # under DDP: BatchNorm statistics over all ranks' batches (= one process)
    compile: bool = False
    select: str = "final"  # final | val: which checkpoint's test result is reported
    eval_every: int = 1  # validate every N epochs (when a validation split exists)
    threads: int = 0  # torch CPU threads (0 = torch's default)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check ``value`` against annotation ``tp``; build nested dataclasses. Raises SkelactError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SkelactError(f"config: {key} must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise SkelactError(f"config: {key} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (object,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is list:
        if not isinstance(value, list):
            raise SkelactError(f"config: {key} must be a list, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise SkelactError(f"config: {key} must be a mapping, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except SkelactError:
                pass
        raise SkelactError(f"config: {key} has the wrong type: {value!r}")
    if tp is type(None):
        if value is not None:
            raise SkelactError(f"config: {key} must be empty")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and
                                               not (tp is int and isinstance(value, bool))):
        raise SkelactError(f"config: {key} must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else \
                f" (valid: {', '.join(names)})"
            raise SkelactError(f"config: unknown key '{prefix}{key}'{hint}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise SkelactError(f"{path}: 'base' files form a cycle")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise SkelactError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SkelactError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise SkelactError(f"{path}: a config must be a mapping of keys to values")
    base = values.pop("base", None)
    if base is None:
        return values
    return merge(_read_yaml((path.parent / base).resolve(), seen + (path,)), values)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; mappings merge, everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(values: dict, text: str) -> dict:
    """Apply ``"optim.lr=0.05"`` to a nested dict: the value (parsed as YAML) replaces what is at the
    path, mappings included (``--set model.options={}`` clears the options)."""
    if "=" not in text:
        raise SkelactError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    if not all(parts):
        raise SkelactError(f"--set {text!r}: empty key part")
    out = dict(values)
    node = out
    for part in parts[:-1]:
        node[part] = dict(node[part]) if isinstance(node.get(part), dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return out


def load_config(paths: str | list[str] | None = None, overrides: list[str] = (),
                values: dict | None = None) -> Config:
    """Resolve a Config from defaults, YAML files (later ones override earlier ones), a dict of
    values and ``--set KEY=VALUE`` overrides, in that order."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    merged: dict = {}
    names: list[str] = []  # a file's own `name` replaces the run name, a file without one appends
    for path in paths:     # its stem: ucla.yaml + ucla_cpu.yaml + ablation/baseline.yaml -> ucla-cpu-baseline
        values_i = _read_yaml(Path(path).resolve())
        names = [str(values_i["name"])] if "name" in values_i else names + [Path(path).stem]
        merged = merge(merged, values_i)
    if paths:
        merged["name"] = "-".join(str(n) for n in names)
    if values:
        merged = merge(merged, values)
    for text in overrides:
        merged = apply_override(merged, text)
    cfg = _build(Config, merged)
    if not cfg.name:
        cfg.name = "-".join([Path(cfg.data.path).name or "data", cfg.model.name,
                             *(h.name for h in cfg.heads)])
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    choices = {"data.generate": (cfg.data.generate, ("auto", "synthetic", "")),
               "data.protocol": (cfg.data.protocol, ("ntu", "ucla", "none")),
               "data.stream": (cfg.data.stream, ("j", "b", "jm", "bm")),
               "optim.schedule": (cfg.optim.schedule, ("step", "cosine")),
               "device": (cfg.device, ("auto", "cpu", "cuda")),
               "amp": (cfg.amp, ("none", "bf16", "fp16")),
               "select": (cfg.select, ("final", "val"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise SkelactError(f"config: {key} must be one of {', '.join(map(repr, allowed))}, "
                               f"got {value!r}")
    positive = {"data.window": cfg.data.window, "data.repeat": cfg.data.repeat,
                "optim.epochs": cfg.optim.epochs, "optim.batch_size": cfg.optim.batch_size,
                "eval_every": cfg.eval_every}
    for key, value in positive.items():
        if value < 1:
            raise SkelactError(f"config: {key} must be at least 1, got {value}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise SkelactError(f"config: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.select == "val" and cfg.data.val_fraction == 0:
        raise SkelactError("config: select=val needs a validation split (data.val_fraction > 0)")
    if cfg.optim.lr <= 0:
        raise SkelactError(f"config: optim.lr must be positive, got {cfg.optim.lr}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def setup_hash(cfg: Config) -> str:
    """12 hex digits identifying the experiment *setup*: the resolved config less the seed and what does
    not change results (run name, device, threads, compile, sync_bn (a no-op in one process), loader
    workers, where the store lies and whether it was generated). Runs that differ only by seed share it, so ``skelact summarize`` groups
    them, and only them."""
    import hashlib
    import json
    d = to_dict(cfg)
    for key in ("seed", "name", "device", "threads", "compile", "sync_bn"):
        d.pop(key)
    for key in ("workers", "path", "generate"):
        d["data"].pop(key)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
