"""The one typed pipeline config: loaded from YAML, validated with messages naming the
field and the bad value, overridden from the CLI with `--set section.key=value`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import ConfigError


def _check(min_value: float | None = None, choices: tuple | None = None) -> dict:
    return {"min": min_value, "choices": choices}


@dataclass
class DatasetConfig:
    root: str = "data/synthetic"
    train_list: str = "train_img_list.csv"
    test_list: str = "test_img_list.csv"


@dataclass
class OutputConfig:
    root: str = "out"


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto" or host:port: join
    num_cpus: int | None = field(default=None, metadata=_check(1))
    num_gpus: int | None = field(default=None, metadata=_check(0))
    batch_size: int = field(default=16, metadata=_check(1))
    concurrency: int | None = field(default=None, metadata=_check(1))


@dataclass
class SynthConfig:
    identities: int = field(default=40, metadata=_check(2))
    poses_per_identity: int = field(default=6, metadata=_check(2))
    seed: int = 0
    test_fraction: float = field(default=0.2, metadata=_check(0.0))


@dataclass
class KeypointsConfig:
    estimator: Literal["openpifpaf", "mediapipe"] = "openpifpaf"
    checkpoint: str = "shufflenetv2k16"  # openpifpaf checkpoint name or path
    annotations: str | None = None  # import this legacy CSV instead of estimating
    compare: str | None = None  # score the keypoints against this legacy CSV (QA)
    # mediapipe: landmarks less visible than this are missing (-1).
    min_visibility: float = field(default=0.5, metadata=_check(0.0))
    batch_size: int = field(default=8, metadata=_check(1))
    concurrency: int | None = field(default=None, metadata=_check(1))
    min_score: float = field(default=0.0, metadata=_check(0.0))


@dataclass
class PosemapsConfig:
    gaussian_sigma: float | None = field(default=None, metadata=_check(0.0))
    batch_size: int = field(default=64, metadata=_check(1))


@dataclass
class PairsConfig:
    min_valid_keypoints: int = field(default=8, metadata=_check(0))
    max_pairs_per_identity: int | None = field(default=None, metadata=_check(1))
    seed: int = 0


@dataclass
class TrainConfig:
    ngf: int = field(default=64, metadata=_check(1))
    ndf: int = field(default=64, metadata=_check(1))
    iterations: int = field(default=260_000, metadata=_check(1))
    batch_size: int = field(default=8, metadata=_check(1))
    lr: float = field(default=1e-3, metadata=_check(0.0))
    beta1: float = field(default=0.5, metadata=_check(0.0))
    beta2: float = field(default=0.999, metadata=_check(0.0))
    lambda_l1: float = field(default=5.0, metadata=_check(0.0))
    lambda_gan: float = field(default=1.0, metadata=_check(0.0))
    lambda_perceptual: float = field(default=5.0, metadata=_check(0.0))
    perceptual: Literal["auto", "required", "off"] = "auto"
    vgg_weights: str | None = None
    ckpt_every: int = field(default=500, metadata=_check(1))
    sample_every: int = field(default=500, metadata=_check(1))
    num_workers: int = field(default=1, metadata=_check(1))
    # DataLoader processes decoding pairs for each Ray Train worker when the set is streamed
    # (0: in the worker); None: 1 when the node has a CPU beyond the workers' share, else 0.
    loader_workers: int | None = field(default=None, metadata=_check(0))
    # Each worker decodes the train set once into memory (uint8 images, one-hot maps as
    # coordinates) when it fits in this many MB; else, or with 0, it decodes every item
    # on every use.
    memory_mb: int = field(default=2048, metadata=_check(0))
    # Test pairs scored after training (trained vs untrained NetG vs copying the condition,
    # SSIM and L1); 0: no check.
    quality_pairs: int = field(default=64, metadata=_check(0))
    # CPUs (and torch threads) per Ray Train worker; None: the cluster's CPUs shared evenly.
    cpus_per_worker: int | None = field(default=None, metadata=_check(1))
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    autocast: Literal["fp32", "bf16", "fp16"] = "fp32"
    # NHWC nets and batches (bench/train.py: faster on the 2-core CPU at ngf 8).
    channels_last: bool = True
    seed: int = 0


@dataclass
class GenerateConfig:
    checkpoints: list[str] = field(default_factory=list)
    ngf: int = field(default=64, metadata=_check(1))
    batch_size: int = field(default=16, metadata=_check(1))
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = True
    minmax: bool = False
    concurrency: int | None = field(default=None, metadata=_check(1))
    # One-hot pose maps travel from the load tasks to the model actors as coordinates, gaussian
    # ones as dense maps; None picks by the maps' kind, true/false overrides.
    sparse_maps: bool | None = None
    pairs: str | None = None  # pairs table or legacy CSV; default: the dataset's


@dataclass
class EvaluateConfig:
    metrics: list[str] = field(
        default_factory=lambda: ["ssim", "psnr", "is", "ds", "pckh", "lpips", "fid"]
    )
    batch_size: int = field(default=32, metadata=_check(1))  # images per network call
    pixel_batch_size: int = field(default=64, metadata=_check(1))  # pairs per SSIM/PSNR task
    concurrency: int | None = field(default=None, metadata=_check(1))  # actors per metric (CPU)
    # "random": random-initialised networks, for tests and benchmarks only (scores are
    # meaningless and marked as such in every output).
    network_weights: Literal["pretrained", "random"] = "pretrained"


@dataclass
class ReportConfig:
    name: str = "demo"
    grid_pairs: int = field(default=3, metadata=_check(1))  # pairs per best/median/worst grid


@dataclass
class WeightsConfig:
    # Extra directory searched for weight files before the torch hub cache.
    dir: str | None = None
    checkpoint_dir: str | None = None  # where netG_<iter>.pth ids are looked up


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    keypoints: KeypointsConfig = field(default_factory=KeypointsConfig)
    posemaps: PosemapsConfig = field(default_factory=PosemapsConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, section: str) -> str:
        return _digest(getattr(self, section))

    def hash(self) -> str:
        return _digest(self)


def _digest(obj: Any) -> str:
    blob = json.dumps(dataclasses.asdict(obj), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0]
            if len(errors) == 1
            else f"config field '{name}': {value!r} is not a {_type_name(tp)}"
        )
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config field '{name}': {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config field '{name}': expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"config field '{name}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"section '{prefix}'" if prefix else "top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(f'{prefix}.{k}'.lstrip('.')) for k in unknown)}"
            f" in {where}; known keys: {', '.join(fields)}"
        )
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}".lstrip(".")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, name)
            continue
        value = _coerce(value, tp, name)
        meta = fields[key].metadata
        if meta.get("min") is not None and value is not None and value < meta["min"]:
            raise ConfigError(
                f"config field '{name}': {value!r} is below the minimum {meta['min']}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data or {}, "")


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value`; the value is parsed as YAML (so 3 is an int, null is None)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load YAML (or the defaults when `path` is None), apply overrides, validate.
    Relative `dataset.root` / `output.root` in a file are relative to the working directory."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return config_from_dict(data)
