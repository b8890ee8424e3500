"""The one typed pipeline config: loaded from YAML, validated with messages naming the
field and the bad value, overridden from the CLI with `--set section.key=value`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.core.errors import ConfigError


def _comma_list(value: Any) -> Any:
    """`--set evaluate.metrics=ssim,psnr` gives a string; lists are written that way too."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors, values are not coerced across types
    (a string is not a number, a bool is not an int; an int is a valid float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DatasetConfig(Section):
    root: str = "data/synthetic"
    train_list: str = "train_img_list.csv"
    test_list: str = "test_img_list.csv"


class OutputConfig(Section):
    root: str = "out"


class RayConfig(Section):
    address: str | None = None  # None: start a local Ray; "auto" or host:port: join
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    # A stage whose batches stop finishing for this long (a cluster that lost the capacity
    # its tasks wait for) prints what Ray waits for and exits 2, keeping finished rows.
    # None: wait forever.
    stall_timeout_s: float | None = Field(600.0, gt=0)


class SynthConfig(Section):
    identities: int = Field(40, ge=2)
    poses_per_identity: int = Field(6, ge=2)
    seed: int = 0
    test_fraction: float = Field(0.2, ge=0.0)


class KeypointsConfig(Section):
    estimator: Literal["openpifpaf", "mediapipe"] = "openpifpaf"
    checkpoint: str = "shufflenetv2k16"  # openpifpaf checkpoint name or path
    # Files of the dataset: a relative path is relative to dataset.root (see dataset_path).
    annotations: str | None = None  # import this legacy CSV instead of estimating
    compare: str | None = None  # score the keypoints against this legacy CSV (QA)
    # mediapipe: landmarks less visible than this are missing (-1).
    min_visibility: float = Field(0.5, ge=0.0)
    batch_size: int = Field(8, ge=1)
    concurrency: int | None = Field(None, ge=1)
    min_score: float = Field(0.0, ge=0.0)


ExecutorName = Literal["auto", "ray", "in_process"]  # generate.executor, posemaps.executor


class PosemapsConfig(Section):
    gaussian_sigma: float | None = Field(None, ge=0.0)
    batch_size: int = Field(64, ge=1)
    # auto: threads of this process when the run stays on one machine (no Ray start-up;
    # on 2 cores 1.9x the maps per second of Ray tasks at 55,000 maps), Ray tasks on a
    # cluster. The maps are identical.
    executor: ExecutorName = "auto"
    # The legacy npz map per image, which the published scripts read. Off: no map files;
    # generate and train render each map (one-hot) from the keypoints table as they load
    # it. A million maps are a million files, about 4 GB, and an hour on 2 cores.
    export: bool = True

    @model_validator(mode="after")
    def _rendered_maps_are_one_hot(self) -> PosemapsConfig:
        if not self.export and self.gaussian_sigma is not None:
            raise ValueError(
                "gaussian_sigma needs export: true (maps rendered from the keypoints table "
                "where they are used are one-hot)"
            )
        return self


class PairsConfig(Section):
    min_valid_keypoints: int = Field(8, ge=0)
    max_pairs_per_identity: int | None = Field(None, ge=1)
    seed: int = 0
    # The legacy CSVs the published scripts read ({train,test}_img_pairs.csv), exports of
    # the pairs table. auto: written up to 2,000,000 pairs (about 200 MB of text); a
    # million images make 5.6 million pairs, 560 MB rewritten on every change.
    export: Literal["auto"] | bool = "auto"


class TrainConfig(Section):
    ngf: int = Field(64, ge=1)
    ndf: int = Field(64, ge=1)
    iterations: int = Field(260_000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, ge=0.0)
    beta1: float = Field(0.5, ge=0.0)
    beta2: float = Field(0.999, ge=0.0)
    lambda_l1: float = Field(5.0, ge=0.0)
    lambda_gan: float = Field(1.0, ge=0.0)
    lambda_perceptual: float = Field(5.0, ge=0.0)
    perceptual: Literal["auto", "required", "off"] = "auto"
    vgg_weights: str | None = None
    ckpt_every: int = Field(500, ge=1)
    sample_every: int = Field(500, ge=1)
    num_workers: int = Field(1, ge=1)
    # DataLoader processes decoding pairs for each Ray Train worker when the set is streamed
    # (0: in the worker); None: 1 when the node has a CPU beyond the workers' share, else 0.
    loader_workers: int | None = Field(None, ge=0)
    # Each worker decodes the train set once into memory (uint8 images, one-hot maps as
    # coordinates) when it fits in this many MB; else, or with 0, it decodes every item
    # on every use.
    memory_mb: int = Field(2048, ge=0)
    # Test pairs scored after training (trained vs untrained NetG vs copying the condition,
    # SSIM and L1); 0: no check.
    quality_pairs: int = Field(64, ge=0)
    # CPUs (and torch threads) per Ray Train worker; None: the cluster's CPUs shared evenly.
    cpus_per_worker: int | None = Field(None, ge=1)
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    autocast: Literal["fp32", "bf16", "fp16"] = "fp32"
    # NHWC nets and batches (bench/train.py: faster on the 2-core CPU at ngf 8).
    channels_last: bool = True
    seed: int = 0


class GenerateConfig(Section):
    checkpoints: list[str] = Field(default_factory=list)

    _split = field_validator("checkpoints", mode="before")(lambda v: _comma_list(v))
    ngf: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = True
    minmax: bool = False
    concurrency: int | None = Field(None, ge=1)
    # One-hot pose maps travel from the load tasks to the model actors as coordinates, gaussian
    # ones as dense maps; None picks by the maps' kind, true/false overrides.
    sparse_maps: bool | None = None
    # Pairs table or legacy CSV (relative: to dataset.root); default: the dataset's.
    pairs: str | None = None
    # auto: in this process when the run stays on one machine and device and has at most
    # in_process_max_jobs images (no Ray start-up); else Ray Data. Outputs are identical.
    executor: ExecutorName = "auto"
    in_process_max_jobs: int = Field(5000, ge=0)


class EvaluateConfig(Section):
    metrics: list[str] = Field(
        default_factory=lambda: ["ssim", "psnr", "is", "ds", "pckh", "lpips", "fid"]
    )

    _split = field_validator("metrics", mode="before")(lambda v: _comma_list(v))

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from pipeline.metrics.registry import METRICS, SPECS

        unknown = [n for n in names if n not in METRICS and n not in SPECS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
        if not names:
            raise ValueError(f"no metric named; known: {', '.join(METRICS)}")
        return names

    batch_size: int = Field(32, ge=1)  # images per network call
    pixel_batch_size: int = Field(64, ge=1)  # pairs per SSIM/PSNR task
    concurrency: int | None = Field(None, ge=1)  # actors per metric (CPU)
    # "random": random-initialised networks, for tests and benchmarks only (scores are
    # meaningless and marked as such in every output).
    network_weights: Literal["pretrained", "random"] = "pretrained"


class ReportConfig(Section):
    name: str = "demo"
    grid_pairs: int = Field(3, ge=1)  # pairs per best/median/worst grid


class WeightsConfig(Section):
    # Extra directory searched for weight files before the torch hub cache.
    dir: str | None = None
    checkpoint_dir: str | None = None  # where netG_<iter>.pth ids are looked up


def check_endpoint(url: str) -> str:
    """An S3-compatible endpoint as the AWS tools take it (AWS_ENDPOINT_URL): a whole
    http(s) URL, so the scheme is never guessed (a guessed https on a plain-http server
    fails with a TLS error that does not name the setting)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(
            f"{url!r} is not an endpoint URL; give scheme, host and optional port, "
            "e.g. http://127.0.0.1:8333 or https://s3.example.com"
        )
    return url.rstrip("/")


class StorageConfig(Section):
    """Object storage for s3:// locations (see pipeline.core.storage). Credentials come
    from the standard AWS variables or files, never from the config (it is hashed and
    recorded in outputs)."""

    # An S3-compatible server (MinIO, SeaweedFS, Ceph...); None: AWS_ENDPOINT_URL_S3 or
    # AWS_ENDPOINT_URL when set, else AWS itself.
    endpoint_override: str | None = None
    # None: the AWS SDK's own choice (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config, us-east-1).
    region: str | None = Field(None, min_length=1)
    # Local state kept for object-storage roots, which cannot hold it: the run lock and
    # the content-digest cache. Never data or outputs. None: $XDG_CACHE_HOME/posetransfer
    # (~/.cache/posetransfer).
    cache_dir: str | None = Field(None, min_length=1)

    @field_validator("endpoint_override")
    @classmethod
    def _endpoint_url(cls, url: str | None) -> str | None:
        return None if url is None else check_endpoint(url)


class Config(Section):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    keypoints: KeypointsConfig = Field(default_factory=KeypointsConfig)
    posemaps: PosemapsConfig = Field(default_factory=PosemapsConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("*", mode="before")
    @classmethod
    def _sections_default_when_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def section_hash(self, section: str) -> str:
        return _digest(getattr(self, section))

    def hash(self) -> str:
        return _digest(self)


def dataset_path(cfg: Config, path: str | Path):
    """A config path that belongs to the dataset (keypoints.annotations, keypoints.compare,
    generate.pairs): relative paths resolve against dataset.root, not the working
    directory, so one config serves every copy of a dataset. A Path, or an ObjectPath on
    object storage (pipeline.core.object_path)."""
    from pipeline.core import storage
    from pipeline.core.object_path import data_path

    text = str(path)
    if storage.scheme(text) is not None or os.path.isabs(text):
        return data_path(text, cfg.storage)
    return data_path(cfg.dataset.root, cfg.storage) / text


def _digest(obj: BaseModel) -> str:
    blob = json.dumps(obj.model_dump(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _message(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error as a sentence naming the field and the bad value."""
    name = ".".join(str(part) for part in error["loc"])
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        section = model
        for part in error["loc"][:-1]:
            section = section.model_fields[part].annotation
        where = f"section '{name.rsplit('.', 1)[0]}'" if len(error["loc"]) > 1 else "top level"
        return (
            f"unknown config key '{name}' in {where}; known keys: {', '.join(section.model_fields)}"
        )
    if error["type"] in ("greater_than_equal", "greater_than"):
        return f"config field '{name}': {value!r} is below the minimum {error['ctx'].get('ge')}"
    if error["type"] == "value_error":  # our validators' own sentences
        return f"config field '{name}': {error['msg'].removeprefix('Value error, ')}"
    if error["type"] == "literal_error":
        return f"config field '{name}': {value!r} is not one of {error['ctx']['expected']}"
    return f"config field '{name}': {value!r} ({type(value).__name__}): {error['msg']}"


def config_from_dict(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError("; ".join(_message(e, Config) for e in exc.errors())) from None


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
