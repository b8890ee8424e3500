"""What a stage declares about itself for the `run` DAG: what it reads and writes, which
config keys change its outputs, and a version a developer bumps when the code that
defines its outputs changes. Nothing else (batch sizes, concurrency, code comments) makes
a stage rerun."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cluster.stage_result import StageResult
from pipeline.core.config import Config

# Reasons shared by several stages' ignored_keys.
RAY_KEYS = {
    "ray.address": "which Ray cluster runs the work: scheduling only",
    "ray.num_cpus": "the CPUs of a local Ray: scheduling only",
    "ray.num_gpus": "the GPUs of a local Ray: scheduling only",
}
# Read by the stages whose batches stream through batch_stream.consume on Ray.
STREAMED_KEYS = {
    **RAY_KEYS,
    "ray.stall_timeout_s": "how long a stage waits for a batch before it stops: a watchdog",
}
DATASET_ROOT = {
    "dataset.root": "where the dataset is: the files the stage reads there are its inputs, "
    "digested by content"
}
OUTPUT_ROOT = {"output.root": "where the outputs (and the content-digest cache) go"}
# Read wherever a stage's files are URIs (pipeline.core.storage): which server holds them.
STORAGE_KEYS = {
    "storage.endpoint_override": "which S3-compatible server holds the files, not what they hold",
    "storage.region": "the region of the bucket that holds the files, not what they hold",
}
# Read by the stages that also keep content digests (ContentCache) of an output root.
CACHED_STORAGE_KEYS = {
    **STORAGE_KEYS,
    "storage.cache_dir": "where this host keeps the digest cache of an object-storage root, "
    "not what the outputs hold",
}


def _nothing(cfg: Config) -> list[Path]:
    return []


def _always_needed(cfg: Config) -> str | None:
    return None


def _no_progress(cfg: Config, record: dict[str, Any]) -> str | None:
    return None


@dataclass(frozen=True)
class StageSpec:
    name: str
    version: int
    # (cfg, fresh) -> result. fresh: earlier outputs were moved aside, start from nothing;
    # otherwise resume, reusing the rows whose inputs did not change.
    run: Callable[[Config, bool], StageResult]
    config_keys: tuple[str, ...]  # dotted keys whose values change the outputs
    inputs: Callable[[Config], list[Path]]  # files and folders, digested by content
    outputs: Callable[[Config], list[Path]]  # all exist once the stage finished
    # Earlier outputs moved aside (never deleted) before a fresh run.
    previous: Callable[[Config], list[Path]] = _nothing
    needed: Callable[[Config], str | None] = _always_needed  # a reason to leave it out
    # The Parquet tables it writes, checked for damage before it runs; None: every
    # .parquet among its outputs and previous outputs (folders read two levels deep: a
    # folder of a million pose maps is worth naming its one table instead).
    tables: Callable[[Config], list[Path]] | None = None
    # True: a changed fingerprint stops the run instead of redoing the work (training).
    guarded: bool = False
    # A reason to resume a stage whose fingerprint matches (train.iterations raised).
    progress: Callable[[Config, dict[str, Any]], str | None] = _no_progress
    # Extra facts stored with the fingerprint, read back by `progress`.
    record: Callable[[Config], dict[str, Any]] = field(default=lambda cfg: {})
    # What a run of the stage does, in one line from the config (printed before it runs).
    does: Callable[[Config], str] = field(default=lambda cfg: "")
    # Dotted keys `run` reads that do not change the outputs, each with the reason: with
    # config_keys they account for every read (tests/test_fingerprint_audit.py checks).
    ignored_keys: dict[str, str] = field(default_factory=dict)


def config_value(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = getattr(node, key)
    return node
