"""The `run` DAG: keypoints -> posemaps -> pairs -> (train) -> generate -> evaluate -> report.

A stage reruns only for a reason it can name: its declared version or output-defining config
keys changed, the content of its inputs changed, an output is missing, or it has more to do
(train.iterations raised). Before redoing work from scratch it moves the earlier outputs
aside to OUT/<stage>.prev/<run id>/; it never deletes them. A stale training run stops the
DAG with the reason and the two ways on. Every run appends to the run manifest."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import resource
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.cluster.runtime import package_versions
from pipeline.core import storage
from pipeline.core.atomic_io import atomic_path, read_table, write_table
from pipeline.core.config import Config
from pipeline.core.content_state import ContentCache
from pipeline.core.errors import PipelineError
from pipeline.core.layout import OutputLayout
from pipeline.core.object_path import DataPath
from pipeline.core.run_lock import output_lock
from stages import STAGE_NAMES, evaluate, generate, keypoints, pairs, posemaps, report, train
from stages.dag_state import (
    Decision,
    decide,
    save_state,
    state_file,
    stored_listing,
    stored_state,
    take_fingerprint,  # noqa: F401 (tests take fingerprints through here)
)
from stages.preflight import preflight
from stages.spec import StageSpec

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
        # The driver's peak memory so far when the stage ended (it only grows): the stage
        # that raised it is the one to look at.
        ("driver_peak_mib", pa.int64()),
    ],
    metadata={"optional": "driver_peak_mib"},
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


# --- running -------------------------------------------------------------------------------


def move_aside(paths: list[Path], cfg: Config, stage: str, run_id: str) -> list[str]:
    """Move `paths` to OUT/<stage>.prev/<run id>/ (never delete them); returns where they
    went, relative to the output root."""
    out = OutputLayout(cfg.output.root)
    dest = out.previous(stage, run_id)
    moved = []
    for path in paths:
        if path.exists():
            target = dest / path.name
            storage.move(path, target)
            moved.append(storage.relative_under(target, out.root))
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
    storage.configure(cfg.storage)
    # The checks of many stages ask about the same folders: on object storage each LIST
    # is asked once (forgotten whenever a stage runs).
    with storage.remembering():
        preflight(cfg, plan.selected)
        if dry_run:
            return _run_stages(cfg, plan, echo, dry_run=True)
        with output_lock(cfg.output.root, f"run {' '.join(plan.selected)}", wait, echo):
            return _run_stages(cfg, plan, echo, dry_run=False)


def _run_stages(
    cfg: Config, plan: RunPlan, echo: Callable[[str], None], dry_run: bool
) -> pd.DataFrame:
    """Decide on each planned stage in DAG order and run it (with `dry_run`, only say what
    would happen); this run's manifest rows are appended even when a stage fails."""
    run = DagRun(cfg, echo, dry_run)
    try:
        for spec in STAGES:
            if spec.name not in plan.selected:
                continue
            if dry_run:
                run.assess(spec, plan)
            else:
                run.stage(spec, plan)
    finally:
        run.close()
    return pd.DataFrame(run.rows)


class DagRun:
    """One `run` of the DAG: its id, the content cache, and a manifest row per stage."""

    def __init__(self, cfg: Config, echo: Callable[[str], None], dry_run: bool):
        self.cfg, self.echo, self.dry_run = cfg, echo, dry_run
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.cfg_hash = cfg.hash()
        self.packages = json.dumps(package_versions(), sort_keys=True)
        self.rows: list[dict[str, Any]] = []
        # Dry run: the stages that would run, with their outputs.
        self.would_change: list[tuple[str, list[Path]]] = []
        self.cache = ContentCache(OutputLayout(cfg.output.root).content_cache, readonly=dry_run)

    def assess(self, spec: StageSpec, plan: RunPlan) -> None:
        """Dry run: say what the stage would do. Its inputs are those of the stage before,
        not yet rerun, so a stage downstream of one that would run says it is checked again."""
        cfg = self.cfg
        decision = decide(spec, cfg, self.cache, plan)
        upstream = [
            name
            for name, outs in self.would_change
            if any(_under(i, outs) for i in spec.inputs(cfg))
        ]
        if upstream and decision.action in ("up to date", "resume"):
            decision.reasons.append(
                f"its inputs may change when {', '.join(upstream)} runs: checked again then"
            )
        if decision.action in ACTIONS_THAT_RUN or upstream:
            self.would_change.append((spec.name, spec.outputs(cfg)))
        self.echo(decision.describe(dry_run=True))
        if decision.action in ACTIONS_THAT_RUN and spec.does(cfg):
            self.echo(f"    would: {spec.does(cfg)}")

    def stage(self, spec: StageSpec, plan: RunPlan) -> None:
        """Decide, say why, and stop the run, pass over the stage or run it."""
        t0 = time.time()
        decision = decide(spec, self.cfg, self.cache, plan)
        row = self._row(spec, decision)
        self.echo(decision.describe())
        if decision.action in ACTIONS_THAT_RUN and spec.does(self.cfg):
            self.echo(f"    does: {spec.does(self.cfg)}")
        if decision.action == "stop":
            self._record(row, t0, status="stopped")
            raise StaleStageError(
                f"{spec.name} is out of date and would lose or mix earlier "
                "work; nothing was changed:\n  " + "\n  ".join(decision.reasons)
            )
        if decision.action in ACTIONS_THAT_RUN:
            self._execute(spec, decision, row, t0)
        else:
            self._pass_over(spec, decision, row, t0)

    def _row(self, spec: StageSpec, decision: Decision) -> dict[str, Any]:
        """The stage's manifest row as it starts; the outcome fills in the rest."""
        return {
            "run_id": self.run_id,
            "stage": spec.name,
            "config_hash": self.cfg_hash,
            "packages": self.packages,
            "start": pd.Timestamp.now().floor("s"),
            "rows_in": 0,
            "rows_out": 0,
            "errors": 0,
            "reused": 0,
            "reason": "; ".join(decision.reasons) or None,
            "moved_aside": None,
            "fingerprint": decision.fingerprint.digest() if decision.fingerprint else None,
        }

    def _pass_over(self, spec: StageSpec, decision: Decision, row: dict, t0: float) -> None:
        """A stage up to date or not needed."""
        cfg = self.cfg
        status = "not needed" if decision.action == "not needed" else "skipped"
        if decision.action == "up to date" and decision.fingerprint:
            # Keys a newer version declares are recorded at the values adopted, so that a
            # later change of one is seen.
            stored = stored_state(cfg, spec.name) or {}
            if set(decision.fingerprint.config) - set(stored.get("config", {})):
                save_state(cfg, spec.name, decision.fingerprint, stored.get("run_id"))
        self._record(row, t0, status=status)

    def _execute(self, spec: StageSpec, decision: Decision, row: dict, t0: float) -> None:
        """Move aside what the decision says, run the stage and record its fingerprint; a
        failure or Ctrl-C is recorded in its row and raised on."""
        cfg = self.cfg
        decision.fingerprint.stage_listings()
        self.cache.save()  # the digests survive a failing stage
        # What the stage writes is walked again by later checks; the folders it only
        # reads (the images) keep their signatures and listings.
        self.cache.forget_trees([*spec.outputs(cfg), *spec.previous(cfg)])
        release_memory()  # the listings just let go: a million files' walk is hundreds of MB
        try:
            # The stage's own reads must see what its workers write.
            with storage.remembering(False):
                self._move_aside(spec, decision, row)
                result = spec.run(cfg, decision.fresh)
        except BaseException as exc:
            self._failed(spec, exc, row, t0)
            raise
        result.finish()
        release_memory()
        self.echo(result.summary())
        # The fingerprint was taken before running, from the inputs this run used.
        save_state(cfg, spec.name, decision.fingerprint, self.run_id)
        for key, folder in decision.fingerprint.listings.items():
            load = partial(stored_listing, cfg, spec.name, key, folder.digest)
            self.cache.keep_listing(folder.root, load)
        self._record(
            row,
            t0,
            status="ran",
            rows_in=result.rows_in,
            rows_out=result.rows_out,
            errors=result.errors,
            reused=result.skipped,
        )

    def _move_aside(self, spec: StageSpec, decision: Decision, row: dict) -> None:
        """Damaged files, and for a fresh run the earlier outputs and their record."""
        cfg = self.cfg
        moved = move_aside(decision.set_aside, cfg, spec.name, self.run_id)
        if decision.fresh:
            state_file(cfg, spec.name).unlink(missing_ok=True)
            moved += move_aside(spec.previous(cfg), cfg, spec.name, self.run_id)
        if moved:
            row["moved_aside"] = json.dumps(moved)
            for path in moved:
                self.echo(f"    moved aside: {storage.join(cfg.output.root, path)}")

    def _failed(self, spec: StageSpec, exc: BaseException, row: dict, t0: float) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt)
        if interrupted:
            done = [r["stage"] for r in self.rows if r["status"] == "ran"]
            self.echo(
                f"[{spec.name}] interrupted: its finished batches are kept"
                + (f"; finished this run: {', '.join(done)}" if done else "")
            )
        self._record(
            row,
            t0,
            status="interrupted" if interrupted else "failed",
            reason=f"{type(exc).__name__}: {exc}",
        )

    def _record(self, row: dict, t0: float, **outcome: Any) -> None:
        """The stage's row, finished with its outcome, end, seconds and the driver's peak."""
        row.update(
            outcome,
            end=pd.Timestamp.now().floor("s"),
            seconds=time.time() - t0,
            driver_peak_mib=peak_rss_mib(),
        )
        self.rows.append(row)

    def close(self) -> None:
        """Keep the content digests and append the manifest rows (not on a dry run)."""
        self.cache.close(save=not self.dry_run)
        if not self.dry_run:
            _append_manifest(self.cfg, self.rows)


def release_memory() -> None:
    """Hand what a finished stage freed back to the system (Python's and Arrow's pools,
    glibc's heap), so that the next stage's peak does not stack on its leftovers."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mib() -> int:
    """This process's peak resident memory so far, in MiB. On Linux its own high-water mark
    (VmHWM): getrusage's ru_maxrss keeps the parent's peak across fork and exec, so a `run`
    started by a process holding gigabytes would report them."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) >> 10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak >> (20 if sys.platform == "darwin" else 10)  # bytes there, KiB on Linux


def _under(path: DataPath, outputs: list[DataPath]) -> bool:
    """`path` is one of `outputs`, lies in one or holds one."""
    return any(
        storage.relative_under(path, o) is not None or storage.relative_under(o, path) is not None
        for o in outputs
    )


def _append_manifest(cfg: Config, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    path = OutputLayout(cfg.output.root).run_manifest
    new = pd.DataFrame(rows)
    if path.exists():
        new = pd.concat([read_table(path), new], ignore_index=True)
    write_table(new, path, RUN_MANIFEST_SCHEMA)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(new.to_json(orient="records", date_format="iso", indent=1))


def previous_runs(cfg: Config) -> list[Path]:
    """Folders of earlier outputs that reruns moved aside, oldest first."""
    root = OutputLayout(cfg.output.root).root
    return sorted(p for p in root.glob("*.prev/*") if p.is_dir())
