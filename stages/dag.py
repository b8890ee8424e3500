"""The `run` DAG: keypoints -> posemaps -> pairs -> (train) -> generate -> evaluate -> report.

A stage reruns only for a reason it can name: its declared version or output-defining config
keys changed, the content of its inputs changed, an output is missing, or it has more to do
(train.iterations raised). Before redoing work from scratch it moves the earlier outputs
aside to OUT/<stage>.prev/<run id>/; it never deletes them. A stale training run stops the
DAG with the reason and the two ways on. Every run appends to the run manifest."""

from __future__ import annotations

import json
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
from pipeline.content_state import ContentCache, listing_digest
from pipeline.errors import PipelineError
from pipeline.layout import OutputLayout
from pipeline.runtime import package_versions
from pipeline.tables import atomic_path, write_table
from stages import STAGE_NAMES, evaluate, generate, keypoints, pairs, posemaps, report, train
from stages.spec import StageSpec, config_value

STAGES: list[StageSpec] = [
    m.STAGE for m in (keypoints, posemaps, pairs, train, generate, evaluate, report)
]
assert tuple(s.name for s in STAGES) == STAGE_NAMES, "stages/__init__.py lists another order"
BY_NAME = {s.name: s for s in STAGES}

RUN_MANIFEST_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("status", pa.string()),  # ran / skipped / failed / not needed / stopped
        ("reason", pa.string()),
        ("start", pa.timestamp("s")),
        ("end", pa.timestamp("s")),
        ("seconds", pa.float64()),
        ("rows_in", pa.int64()),
        ("rows_out", pa.int64()),
        ("errors", pa.int64()),
        ("reused", pa.int64()),  # rows kept from earlier runs (their inputs unchanged)
        ("fingerprint", pa.string()),
        ("config_hash", pa.string()),
        ("packages", pa.string()),  # JSON {package: version}
        ("moved_aside", pa.string()),  # JSON [paths] of earlier outputs moved aside
    ]
)

ACTIONS_THAT_RUN = ("run", "resume", "update")


class StaleStageError(PipelineError):
    """A guarded stage (training) is stale; the user chooses how to go on."""


@dataclass
class RunPlan:
    selected: list[str]
    forced: set[str] = field(default_factory=set)
    resumed: set[str] = field(default_factory=set)  # continue despite a changed fingerprint


def plan_run(
    only: str | None = None,
    start: str | None = None,
    force: tuple[str, ...] = (),
    resume: tuple[str, ...] = (),
) -> RunPlan:
    """`--only X` runs X (forced); `--from X` forces X and checks everything after it;
    `--force X` redoes X even when up to date; `--resume X` continues X's outputs although
    its fingerprint changed."""
    for name in [only, start, *force, *resume]:
        if name is not None and name not in STAGE_NAMES:
            raise PipelineError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    if only:
        return RunPlan([only], {only}, set(resume))
    selected = list(STAGE_NAMES[STAGE_NAMES.index(start) :]) if start else list(STAGE_NAMES)
    return RunPlan(selected, set(force) | ({start} if start else set()), set(resume))


# --- fingerprints --------------------------------------------------------------------------


@dataclass
class Fingerprint:
    version: int
    config: dict[str, Any]
    inputs: dict[str, str]  # path -> content digest ("missing")
    listings: dict[str, dict[str, str]]  # folder -> {relative path: digest}
    record: dict[str, Any]

    def digest(self) -> str:
        blob = json.dumps(
            {"v": self.version, "c": self.config, "i": self.inputs}, sort_keys=True, default=str
        )
        return listing_digest({"fingerprint": blob})[:20]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "config": self.config,
            "inputs": self.inputs,
            "record": self.record,
            "fingerprint": self.digest(),
        }


def take_fingerprint(spec: StageSpec, cfg: Config, cache: ContentCache) -> Fingerprint:
    inputs, listings = {}, {}
    for path in spec.inputs(cfg):
        key = str(path)
        if path.is_dir():
            listings[key] = cache.tree(path)
            inputs[key] = listing_digest(listings[key])
        elif path.is_file():
            inputs[key] = cache.digest(path)
        else:
            inputs[key] = "missing"
    config = {k: _plain(config_value(cfg, k)) for k in spec.config_keys}
    return Fingerprint(spec.version, config, inputs, listings, spec.record(cfg))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _state_file(cfg: Config, name: str) -> Path:
    return OutputLayout(cfg.output.root).state / f"{name}.json"


def _listing_file(cfg: Config, name: str) -> Path:
    return OutputLayout(cfg.output.root).state / f"{name}.inputs.json"


def stored_state(cfg: Config, name: str) -> dict[str, Any] | None:
    path = _state_file(cfg, name)
    return json.loads(path.read_text()) if path.exists() else None


def save_state(cfg: Config, name: str, fp: Fingerprint, run_id: str) -> None:
    with atomic_path(_state_file(cfg, name)) as tmp:
        tmp.write_text(json.dumps({**fp.to_json(), "run_id": run_id}, indent=1, default=str))
    with atomic_path(_listing_file(cfg, name)) as tmp:
        tmp.write_text(json.dumps(fp.listings))


def changes(
    stored: dict[str, Any], fp: Fingerprint, old_listings: dict[str, dict[str, str]]
) -> tuple[list[str], list[str]]:
    """(output-defining changes: version and config keys, input changes), as sentences."""
    defining = []
    if stored.get("version") != fp.version:
        defining.append(f"stage version {stored.get('version')} -> {fp.version}")
    old_config = stored.get("config", {})
    for key in sorted(set(old_config) | set(fp.config)):
        if old_config.get(key, "<unset>") != fp.config.get(key, "<unset>"):
            defining.append(
                f"{key}: {old_config.get(key, '<unset>')!r} -> {fp.config.get(key, '<unset>')!r}"
            )
    inputs = []
    old_inputs = stored.get("inputs", {})
    for path in sorted(set(old_inputs) | set(fp.inputs)):
        old, new = old_inputs.get(path, "missing"), fp.inputs.get(path, "missing")
        if old == new:
            continue
        if path in fp.listings and path in old_listings:
            a, b = old_listings[path], fp.listings[path]
            added = len(b.keys() - a.keys())
            removed = len(a.keys() - b.keys())
            changed = sum(1 for k in a.keys() & b.keys() if a[k] != b[k])
            inputs.append(f"{path}: {changed} file(s) changed, {added} added, {removed} removed")
        elif new == "missing":
            inputs.append(f"{path}: gone")
        elif old == "missing":
            inputs.append(f"{path}: new")
        else:
            inputs.append(f"{path}: content changed")
    return defining, inputs


# --- decisions -----------------------------------------------------------------------------


@dataclass
class Decision:
    stage: str
    action: str  # up to date / run / resume / update / stop / not needed
    reasons: list[str]
    fresh: bool = False  # earlier outputs are moved aside first
    fingerprint: Fingerprint | None = None

    def describe(self, dry_run: bool = False) -> str:
        verb = {
            "up to date": "up to date",
            "not needed": "not needed",
            "run": "would run" if dry_run else "running",
            "resume": "would resume" if dry_run else "resuming",
            "update": "would update" if dry_run else "updating",
            "stop": "stale: stops the run",
        }[self.action]
        if self.fresh and self.action == "run":
            verb += " from scratch (earlier outputs moved aside)"
        why = "".join(f"\n    - {r}" for r in self.reasons)
        return f"[{self.stage}] {verb}{why}"


def decide(spec: StageSpec, cfg: Config, cache: ContentCache, plan: RunPlan) -> Decision:
    reason = spec.needed(cfg)
    if reason:
        return Decision(spec.name, "not needed", [reason])
    fp = take_fingerprint(spec, cfg, cache)
    stored = stored_state(cfg, spec.name)
    if spec.name in plan.forced:
        return Decision(spec.name, "run", ["asked for (--force, --from or --only)"], True, fp)
    present = [p for p in (*spec.outputs(cfg), *spec.previous(cfg)) if p.exists()]
    if stored is None:
        if present:
            return Decision(
                spec.name,
                "resume",
                ["no record of a finished run: resuming what is on disk"],
                False,
                fp,
            )
        return Decision(spec.name, "run", ["never ran"], False, fp)
    if "version" not in stored:
        # Written before stages declared what defines their outputs: adopt it rather than
        # redo work that an upgrade did not invalidate.
        return Decision(
            spec.name, "up to date", ["record of an earlier pipeline version adopted"], False, fp
        )
    old_listings_path = _listing_file(cfg, spec.name)
    old_listings = json.loads(old_listings_path.read_text()) if old_listings_path.exists() else {}
    defining, inputs = changes(stored, fp, old_listings)
    if spec.guarded and (defining or inputs) and spec.name not in plan.resumed:
        return Decision(
            spec.name,
            "stop",
            [
                *defining,
                *inputs,
                f"to start a new {spec.name} run (the current one is moved aside): "
                f"--force {spec.name}; to continue the current one with these changes: "
                f"--resume {spec.name}",
            ],
            False,
            fp,
        )
    if defining and not spec.guarded:
        return Decision(spec.name, "run", defining + inputs, True, fp)
    if defining or inputs:
        return Decision(spec.name, "update", defining + inputs, False, fp)
    missing = [str(p) for p in spec.outputs(cfg) if not p.exists()]
    if missing:
        return Decision(spec.name, "resume", [f"output missing: {m}" for m in missing], False, fp)
    more = spec.progress(cfg, stored.get("record", {}))
    if more:
        return Decision(spec.name, "resume", [more], False, fp)
    return Decision(spec.name, "up to date", [], False, fp)


# --- running -------------------------------------------------------------------------------


def move_aside(spec: StageSpec, cfg: Config, run_id: str) -> list[str]:
    """Move the stage's earlier outputs to OUT/<stage>.prev/<run id>/ (never delete them)."""
    dest = OutputLayout(cfg.output.root).previous(spec.name, run_id)
    moved = []
    for path in spec.previous(cfg):
        if path.exists():
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / path.name
            shutil.move(str(path), str(target))
            moved.append(str(target))
    return moved


def run_dag(
    cfg: Config, plan: RunPlan, echo: Callable[[str], None] = print, dry_run: bool = False
) -> pd.DataFrame:
    """Run (or with `dry_run` only assess) the planned stages in order; returns this run's
    manifest rows. Stages start Ray themselves when they have work, so an up-to-date run
    never starts it."""
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    cfg_hash, packages = cfg.hash(), json.dumps(package_versions(), sort_keys=True)
    rows: list[dict[str, Any]] = []
    would_change: list[tuple[str, list[Path]]] = []
    cache = ContentCache(OutputLayout(cfg.output.root).state / "content.sqlite", readonly=dry_run)
    try:
        for spec in STAGES:
            if spec.name not in plan.selected:
                continue
            t0 = time.time()
            decision = decide(spec, cfg, cache, plan)
            if dry_run:
                upstream = [
                    name
                    for name, outs in would_change
                    if any(_under(i, outs) for i in spec.inputs(cfg))
                ]
                if upstream and decision.action in ("up to date", "resume"):
                    decision.reasons.append(
                        f"its inputs may change when {', '.join(upstream)} runs: checked again then"
                    )
                if decision.action in ACTIONS_THAT_RUN or upstream:
                    would_change.append((spec.name, spec.outputs(cfg)))
                echo(decision.describe(dry_run=True))
                if decision.action in ACTIONS_THAT_RUN and spec.does(cfg):
                    echo(f"    would: {spec.does(cfg)}")
                continue
            row = {
                "run_id": run_id,
                "stage": spec.name,
                "config_hash": cfg_hash,
                "packages": packages,
                "start": pd.Timestamp.now().floor("s"),
                "rows_in": 0,
                "rows_out": 0,
                "errors": 0,
                "reused": 0,
                "reason": "; ".join(decision.reasons) or None,
                "moved_aside": None,
                "fingerprint": decision.fingerprint.digest() if decision.fingerprint else None,
            }
            echo(decision.describe())
            if decision.action in ACTIONS_THAT_RUN and spec.does(cfg):
                echo(f"    does: {spec.does(cfg)}")
            if decision.action == "stop":
                row.update(status="stopped", end=pd.Timestamp.now().floor("s"), seconds=0.0)
                rows.append(row)
                raise StaleStageError(
                    f"{spec.name} is out of date and would lose or mix earlier "
                    "work; nothing was changed:\n  " + "\n  ".join(decision.reasons)
                )
            if decision.action not in ACTIONS_THAT_RUN:
                status = "not needed" if decision.action == "not needed" else "skipped"
                row.update(
                    status=status, end=pd.Timestamp.now().floor("s"), seconds=time.time() - t0
                )
                rows.append(row)
                continue
            cache.save()  # the digests survive a failing stage
            try:
                if decision.fresh:
                    _state_file(cfg, spec.name).unlink(missing_ok=True)
                    moved = move_aside(spec, cfg, run_id)
                    row["moved_aside"] = json.dumps(moved) if moved else None
                    for path in moved:
                        echo(f"    moved aside: {path}")
                result = spec.run(cfg, decision.fresh)
            except BaseException as exc:
                row.update(
                    status="failed",
                    reason=f"{type(exc).__name__}: {exc}",
                    end=pd.Timestamp.now().floor("s"),
                    seconds=time.time() - t0,
                )
                rows.append(row)
                raise
            result.finish()
            echo(result.summary())
            # The fingerprint was taken before running, from the inputs this run used.
            save_state(cfg, spec.name, decision.fingerprint, run_id)
            row.update(
                status="ran",
                rows_in=result.rows_in,
                rows_out=result.rows_out,
                errors=result.errors,
                reused=result.skipped,
                end=pd.Timestamp.now().floor("s"),
                seconds=time.time() - t0,
            )
            rows.append(row)
    finally:
        cache.close(save=not dry_run)
        if not dry_run:
            _append_manifest(cfg, rows)
    return pd.DataFrame(rows)


def _under(path: Path, outputs: list[Path]) -> bool:
    path = Path(path).resolve()
    return any(
        path == o.resolve() or o.resolve() in path.parents or path in o.resolve().parents
        for o in outputs
    )


def _append_manifest(cfg: Config, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    path = OutputLayout(cfg.output.root).run_manifest
    new = pd.DataFrame(rows)
    if path.exists():
        new = pd.concat([pd.read_parquet(path), new], ignore_index=True)
    write_table(new, path, RUN_MANIFEST_SCHEMA)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(new.to_json(orient="records", date_format="iso", indent=1))


def previous_runs(cfg: Config) -> list[Path]:
    """Folders of earlier outputs that reruns moved aside, oldest first."""
    root = OutputLayout(cfg.output.root).root
    return sorted(p for p in root.glob("*.prev/*") if p.is_dir())
