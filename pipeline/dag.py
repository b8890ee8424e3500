"""The `run` DAG: keypoints -> posemaps -> pairs -> (train) -> generate -> evaluate -> report.

A stage is skipped when its outputs exist and its fingerprint matches: a hash of its config
sections, the code version and digests of its inputs (upstream outputs included), stored
beside its outputs. Every run appends to a run manifest (Parquet and JSON)."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.config import Config
from pipeline.runtime import StageResult, package_versions
from pipeline.tables import DatasetLayout, atomic_path, write_table

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
FULL_HASH_LIMIT = 64 * 1024 * 1024   # files above this are digested by size and mtime

RUN_MANIFEST_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("stage", pa.string()),
    ("status", pa.string()),          # ran / skipped / failed / not needed
    ("reason", pa.string()),
    ("start", pa.timestamp("s")),
    ("end", pa.timestamp("s")),
    ("seconds", pa.float64()),
    ("rows_in", pa.int64()),
    ("rows_out", pa.int64()),
    ("errors", pa.int64()),
    ("fingerprint", pa.string()),
    ("config_hash", pa.string()),
    ("packages", pa.string()),        # JSON {package: version}
])  # fmt: skip


@dataclass
class Stage:
    name: str
    entry: str                                   # "stages.module:function"
    sections: tuple[str, ...]                    # config sections it depends on
    inputs: Callable[[Config], list[Path]]
    outputs: Callable[[Config], list[Path]]
    options: Callable[[Config, bool], dict[str, Any]] = lambda cfg, force: {"force": force}
    needed: Callable[[Config], str | None] = lambda cfg: None   # reason to skip, or None
    # Derived outputs removed before a fresh (forced or stale) run, so nothing from an
    # earlier configuration (say a checkpoint of a longer training) survives into this one.
    clean: Callable[[Config], list[Path]] = lambda cfg: []

    def marker(self, cfg: Config) -> Path:
        return state_dir(cfg) / f"{self.name}.json"

    def run(self, cfg: Config, force: bool) -> StageResult:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)(cfg, **self.options(cfg, force))


def state_dir(cfg: Config) -> Path:
    return Path(cfg.output.root) / "_state"


def out_dir(cfg: Config, name: str) -> Path:
    return Path(cfg.output.root) / name


def _layout(cfg: Config) -> DatasetLayout:
    return DatasetLayout(cfg.dataset.root)


def _image_lists(cfg: Config) -> list[Path]:
    root = Path(cfg.dataset.root)
    return [root / cfg.dataset.train_list, root / cfg.dataset.test_list]


def _keypoints_inputs(cfg: Config) -> list[Path]:
    paths = _image_lists(cfg) + [Path(cfg.dataset.root) / "img"]
    paths += [Path(p) for p in (cfg.keypoints.annotations, cfg.keypoints.compare) if p]
    return paths


def _checkpoints_dir(cfg: Config) -> Path:
    return out_dir(cfg, "train") / "checkpoints"


def _generate_inputs(cfg: Config) -> list[Path]:
    ckpts = [Path(c) for c in cfg.generate.checkpoints] or [_checkpoints_dir(cfg)]
    layout = _layout(cfg)
    return [layout.pairs_table, layout.keypoints_table, layout.posemap_dir("test"), *ckpts]


def _train_needed(cfg: Config) -> str | None:
    if cfg.generate.checkpoints:
        return "generate.checkpoints names the checkpoints to use"
    return None


STAGES: list[Stage] = [
    Stage("keypoints", "stages.keypoints:run_keypoints", ("dataset", "keypoints"),
          _keypoints_inputs,
          lambda cfg: [_layout(cfg).keypoints_table]),
    Stage("posemaps", "stages.posemaps:run_posemaps", ("posemaps",),
          lambda cfg: [_layout(cfg).keypoints_table],
          lambda cfg: [_layout(cfg).posemap_dir(s) for s in ("train", "test")]),
    Stage("pairs", "stages.pairs:run_pairs", ("pairs",),
          lambda cfg: [_layout(cfg).keypoints_table, *_image_lists(cfg)],
          lambda cfg: [_layout(cfg).pairs_table],
          options=lambda cfg, force: {}),
    Stage("train", "stages.train:run_train", ("train", "weights"),
          lambda cfg: [_layout(cfg).pairs_table, _layout(cfg).keypoints_table,
                       _layout(cfg).posemap_dir("train")],
          lambda cfg: [_checkpoints_dir(cfg)],
          options=lambda cfg, force: {"resume": not force},
          needed=_train_needed,
          clean=lambda cfg: [out_dir(cfg, "train")]),
    Stage("generate", "stages.generate:run_generate", ("generate",),
          _generate_inputs,
          lambda cfg: [out_dir(cfg, "generated") / "manifest.parquet"],
          options=lambda cfg, force: {},
          clean=lambda cfg: [out_dir(cfg, "generated")]),
    Stage("evaluate", "stages.evaluate:run_evaluate", ("evaluate", "weights"),
          lambda cfg: [out_dir(cfg, "generated") / "manifest.parquet", _layout(cfg).keypoints_table],
          lambda cfg: [out_dir(cfg, "evaluation")],
          options=lambda cfg, force: {},
          clean=lambda cfg: [out_dir(cfg, "evaluation")]),
    Stage("report", "stages.report:run_report", ("report",),
          lambda cfg: [out_dir(cfg, "evaluation"), out_dir(cfg, "generated") / "manifest.parquet"],
          lambda cfg: [out_dir(cfg, "reports") / cfg.report.name / "report.html"],
          options=lambda cfg, force: {},
          clean=lambda cfg: [out_dir(cfg, "reports") / cfg.report.name]),
]
STAGE_NAMES = [s.name for s in STAGES]


# --- fingerprints ----------------------------------------------------------------------

def digest_path(path: Path) -> str:
    """Content hash of a small file; name/size/mtime listing of a directory or big file
    (a dataset of 50k images is listed, not read)."""
    h = hashlib.sha256()
    if not path.exists():
        return "missing"
    if path.is_file():
        st = path.stat()
        if st.st_size <= FULL_HASH_LIMIT:
            h.update(path.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def code_version(stage: Stage) -> str:
    """Hash of the stage module and the shared pipeline package it runs on."""
    module = stage.entry.split(":")[0]
    files = [REPO / (module.replace(".", "/") + ".py"), *sorted((REPO / "pipeline").rglob("*.py"))]
    h = hashlib.sha256()
    for f in files:
        if f.exists() and f.name != "dag.py":
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(stage: Stage, cfg: Config) -> str:
    parts = {
        "code": code_version(stage),
        "config": {s: cfg.section_hash(s) for s in stage.sections},
        "dataset_root": str(Path(cfg.dataset.root).resolve()),
        "inputs": {str(p): digest_path(p) for p in stage.inputs(cfg)},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def stored_fingerprint(stage: Stage, cfg: Config) -> str | None:
    marker = stage.marker(cfg)
    return json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None


def up_to_date(stage: Stage, cfg: Config, fp: str) -> bool:
    return stored_fingerprint(stage, cfg) == fp and all(p.exists() for p in stage.outputs(cfg))


# --- running -----------------------------------------------------------------------------

@dataclass
class RunPlan:
    selected: list[str]
    forced: set[str] = field(default_factory=set)


def plan_run(only: str | None = None, start: str | None = None, force: tuple[str, ...] = ()) -> RunPlan:
    """Which stages to consider and which to force. `--only X` runs X (forced); `--from X`
    forces X and checks everything after it; `--force X` reruns X even when up to date."""
    for name in [only, start, *force]:
        if name is not None and name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    if only:
        return RunPlan([only], {only})
    selected = STAGE_NAMES[STAGE_NAMES.index(start):] if start else list(STAGE_NAMES)
    return RunPlan(selected, set(force) | ({start} if start else set()))


def run_dag(cfg: Config, plan: RunPlan, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the planned stages in order; returns this run's manifest rows. Stages start Ray
    themselves when they have work, so an up-to-date run never starts it."""
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    cfg_hash, packages = cfg.hash(), json.dumps(package_versions(), sort_keys=True)
    rows: list[dict[str, Any]] = []
    try:
        for stage in STAGES:
            if stage.name not in plan.selected:
                continue
            row = {"run_id": run_id, "stage": stage.name, "config_hash": cfg_hash,
                   "packages": packages, "start": pd.Timestamp.now().floor("s"),
                   "rows_in": 0, "rows_out": 0, "errors": 0, "reason": None}
            t0 = time.time()
            reason = stage.needed(cfg)
            fp = fingerprint(stage, cfg)
            row["fingerprint"] = fp
            if reason:
                row.update(status="not needed", reason=reason)
                echo(f"[{stage.name}] not needed: {reason}")
            elif stage.name not in plan.forced and up_to_date(stage, cfg, fp):
                row.update(status="skipped", reason="up to date")
                echo(f"[{stage.name}] up to date, skipped")
            else:
                # Fresh when forced or when an earlier completed run used other inputs; a
                # stage without a marker was interrupted and resumes what it had written.
                stored = stored_fingerprint(stage, cfg)
                fresh = stage.name in plan.forced or (stored is not None and stored != fp)
                echo(f"[{stage.name}] running{' from scratch' if fresh else ''} ...")
                try:
                    if fresh:
                        stage.marker(cfg).unlink(missing_ok=True)
                        for path in stage.clean(cfg):
                            shutil.rmtree(path, ignore_errors=True)
                    result = stage.run(cfg, force=fresh)
                except Exception as exc:
                    row.update(status="failed", reason=f"{type(exc).__name__}: {exc}",
                               end=pd.Timestamp.now().floor("s"), seconds=time.time() - t0)
                    rows.append(row)
                    raise
                result.finish()
                echo(result.summary())
                # The fingerprint is taken before running, from the inputs this run used.
                with atomic_path(stage.marker(cfg)) as tmp:
                    tmp.write_text(json.dumps({"fingerprint": fp, "run_id": run_id,
                                               "outputs": result.outputs}, indent=1))
                row.update(status="ran", rows_in=result.rows_in, rows_out=result.rows_out,
                           errors=result.errors)
            row.update(end=pd.Timestamp.now().floor("s"), seconds=time.time() - t0)
            rows.append(row)
    finally:
        _append_manifest(cfg, rows)
    return pd.DataFrame(rows)


def _append_manifest(cfg: Config, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    path = Path(cfg.output.root) / "run_manifest.parquet"
    new = pd.DataFrame(rows)
    if path.exists():
        new = pd.concat([pd.read_parquet(path), new], ignore_index=True)
    write_table(new, path, RUN_MANIFEST_SCHEMA)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(new.to_json(orient="records", date_format="iso", indent=1))
