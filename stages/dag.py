"""The `run` DAG: keypoints -> posemaps -> pairs -> (train) -> generate -> evaluate -> report.

A stage reruns only for a reason it can name: its declared version or output-defining config
keys changed, the content of its inputs changed, an output is missing, or it has more to do
(train.iterations raised). Before redoing work from scratch it moves the earlier outputs
aside to OUT/<stage>.prev/<run id>/; it never deletes them. A stale training run stops the
DAG with the reason and the two ways on. Every run appends to the run manifest."""

from __future__ import annotations

import json
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

from pipeline.cluster.runtime import package_versions
from pipeline.core.atomic_io import atomic_path, table_damage, write_table
from pipeline.core.config import Config
from pipeline.core.content_state import ContentCache, listing_digest
from pipeline.core.errors import PipelineError
from pipeline.core.layout import OutputLayout
from pipeline.core.paths import relative_under
from pipeline.core.run_lock import output_lock
from stages import STAGE_NAMES, evaluate, generate, keypoints, pairs, posemaps, report, train
from stages.preflight import preflight
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
        ("status", pa.string()),  # ran / skipped / failed / interrupted / not needed / stopped
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
        ("moved_aside", pa.string()),  # JSON [paths relative to the output root] moved aside
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


def input_key(cfg: Config, path: str | Path) -> str:
    """How state files name an input: `dataset:<path>` or `output:<path>` relative to its
    root (the innermost one), else the absolute path. A copied dataset and output root
    (cp -a, rsync -a) therefore keep their records. Keys of older state files (paths as the
    config gave them) are read through here too."""
    if str(path).startswith(ROOT_PREFIXES):
        return str(path)
    roots = [("dataset", cfg.dataset.root), ("output", cfg.output.root)]
    found = [(name, rel) for name, root in roots if (rel := relative_under(path, root))]
    if not found:
        return os.path.abspath(path)
    # The dataset may sit inside the output root (the demo's): the longer match is inner.
    name, rel = min(found, key=lambda f: len(f[1]))
    return f"{name}:{rel}"


ROOT_PREFIXES = ("dataset:", "output:")


def take_fingerprint(spec: StageSpec, cfg: Config, cache: ContentCache) -> Fingerprint:
    inputs, listings = {}, {}
    for path in spec.inputs(cfg):
        key = input_key(cfg, path)
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
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    state["inputs"] = {input_key(cfg, k): v for k, v in state.get("inputs", {}).items()}
    return state


def stored_listings(cfg: Config, name: str) -> dict[str, dict[str, str]]:
    path = _listing_file(cfg, name)
    listings = json.loads(path.read_text()) if path.exists() else {}
    return {input_key(cfg, k): v for k, v in listings.items()}


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
    # A key the record predates (a newer version declares it) is adopted at its current
    # value: an upgrade alone never redoes work. A key no longer declared is dropped.
    for key in sorted(set(old_config) & set(fp.config)):
        if old_config[key] != fp.config[key]:
            defining.append(f"{key}: {old_config[key]!r} -> {fp.config[key]!r}")
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


def unreadable_tables(paths: list[Path]) -> dict[Path, str]:
    """The Parquet tables among `paths` (files, and folders two levels deep) whose footer
    cannot be read, with why: a truncated table makes its stage stale instead of crashing
    the next reader."""
    tables = set()
    for path in paths:
        if path.is_file() and path.suffix == ".parquet":
            tables.add(path)
        elif path.is_dir():
            tables.update([*path.glob("*.parquet"), *path.glob("*/*.parquet")])
    return {t: why for t in sorted(tables) if (why := table_damage(t))}


# --- decisions -----------------------------------------------------------------------------


@dataclass
class Decision:
    stage: str
    action: str  # up to date / run / resume / update / stop / not needed
    reasons: list[str]
    fresh: bool = False  # earlier outputs are moved aside first
    fingerprint: Fingerprint | None = None
    set_aside: list[Path] = field(default_factory=list)  # damaged files moved aside first

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
    damaged = unreadable_tables([*spec.outputs(cfg), *spec.previous(cfg)])
    if damaged:
        reasons = [f"{path} is unreadable ({why})" for path, why in damaged.items()]
        if spec.guarded:
            return Decision(
                spec.name,
                "stop",
                [*reasons, f"to start a new {spec.name} run (the current one is moved aside): "
                 f"--force {spec.name}"],
                False,
                fp,
            )  # fmt: skip
        reasons.append("the damaged file(s) are moved aside and their rows made again")
        return Decision(spec.name, "resume", reasons, False, fp, set_aside=list(damaged))
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
    defining, inputs = changes(stored, fp, stored_listings(cfg, spec.name))
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


def move_aside(paths: list[Path], cfg: Config, stage: str, run_id: str) -> list[str]:
    """Move `paths` to OUT/<stage>.prev/<run id>/ (never delete them); returns where they
    went, relative to the output root."""
    out = OutputLayout(cfg.output.root)
    dest = out.previous(stage, run_id)
    moved = []
    for path in paths:
        if path.exists():
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / path.name
            shutil.move(str(path), str(target))
            moved.append(relative_under(target, out.root))
    return moved


def run_dag(
    cfg: Config,
    plan: RunPlan,
    echo: Callable[[str], None] = print,
    dry_run: bool = False,
    wait: bool = False,
) -> pd.DataFrame:
    """Check the inputs, take the output root's lock (`wait`: until it is free), then run
    (or with `dry_run` only assess, without the lock) the planned stages in order; returns
    this run's manifest rows. Stages start Ray themselves when they have work, so an
    up-to-date run never starts it."""
    preflight(cfg, plan.selected)
    if dry_run:
        return _run_stages(cfg, plan, echo, dry_run=True)
    with output_lock(cfg.output.root, f"run {' '.join(plan.selected)}", wait, echo):
        return _run_stages(cfg, plan, echo, dry_run=False)


def _run_stages(
    cfg: Config, plan: RunPlan, echo: Callable[[str], None], dry_run: bool
) -> pd.DataFrame:
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
                if decision.action == "up to date" and decision.fingerprint:
                    # Keys a newer version declares are recorded at the values adopted, so
                    # that a later change of one is seen.
                    stored = stored_state(cfg, spec.name) or {}
                    if set(decision.fingerprint.config) - set(stored.get("config", {})):
                        save_state(cfg, spec.name, decision.fingerprint, stored.get("run_id"))
                row.update(
                    status=status, end=pd.Timestamp.now().floor("s"), seconds=time.time() - t0
                )
                rows.append(row)
                continue
            cache.save()  # the digests survive a failing stage
            try:
                moved = move_aside(decision.set_aside, cfg, spec.name, run_id)
                if decision.fresh:
                    _state_file(cfg, spec.name).unlink(missing_ok=True)
                    moved += move_aside(spec.previous(cfg), cfg, spec.name, run_id)
                if moved:
                    row["moved_aside"] = json.dumps(moved)
                    for path in moved:
                        echo(f"    moved aside: {Path(cfg.output.root) / path}")
                result = spec.run(cfg, decision.fresh)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    done = [r["stage"] for r in rows if r["status"] == "ran"]
                    echo(
                        f"[{spec.name}] interrupted: its finished batches are kept"
                        + (f"; finished this run: {', '.join(done)}" if done else "")
                    )
                row.update(
                    status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
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
