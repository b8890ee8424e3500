"""What the DAG remembers of a stage and what it decides from it: the fingerprint of a run
(its version, output-defining config values and input digests), the state files under
OUT/state/ that keep it, the changes since as the sentences `run` prints, and the decision
(run, resume, update, stop, up to date, not needed). stages/dag.py runs the decisions."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import storage
from pipeline.core.atomic_io import atomic_path, table_damage
from pipeline.core.config import Config
from pipeline.core.content_state import ContentCache, Folder, listing_digest
from pipeline.core.layout import OutputLayout
from stages.spec import StageSpec, config_value

if TYPE_CHECKING:
    from stages.dag import RunPlan

# --- fingerprints --------------------------------------------------------------------------


@dataclass
class Fingerprint:
    version: int
    config: dict[str, Any]
    inputs: dict[str, str]  # path -> content digest ("missing")
    listings: dict[str, Folder]  # the folders among the inputs
    record: dict[str, Any]
    listing_dir: Any = None  # where listings are kept by digest (`listing_dir(cfg)`)

    def digest(self) -> str:
        blob = json.dumps(
            {"v": self.version, "c": self.config, "i": self.inputs}, sort_keys=True, default=str
        )
        return listing_digest({"fingerprint": blob})[:20]

    def stage_listings(self) -> None:
        """Before a stage runs: its input folders' listings as digested now, written under
        their digest (a later run reads them back to scan only what changed) and let go,
        so that the stage has the memory (a million files' listing is hundreds of MB). A
        listing already kept under its digest (another stage's input too: the images) is
        neither made nor written again. Written before the stage runs, they claim nothing:
        the state file written after it does."""
        for folder in self.listings.values():
            path = self.listing_dir / f"{folder.digest}.json"
            if not path.exists():
                with atomic_path(path) as tmp:
                    # json.dumps, not json.dump: only a one-shot encode takes the C encoder
                    # (52,712 files' listing: 0.16 s in the pure-Python one).
                    tmp.write_text(json.dumps(folder.listing))
            folder.forget()

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
    found = [(name, rel) for name, root in roots if (rel := storage.relative_under(path, root))]
    if not found:
        return os.path.abspath(path) if storage.is_local(path) else str(path)
    # The dataset may sit inside the output root (the demo's): the longer match is inner.
    name, rel = min(found, key=lambda f: len(f[1]))
    return f"{name}:{rel}"


ROOT_PREFIXES = ("dataset:", "output:")


def take_fingerprint(
    spec: StageSpec, cfg: Config, cache: ContentCache, stored: dict[str, Any] | None = None
) -> Fingerprint:
    """The stage's fingerprint now; `stored`: its last run's state, whose recorded folder
    listings the cache may bring up to date instead of walking a changed folder whole."""
    inputs, listings = {}, {}
    recorded = (stored or {}).get("inputs", {})
    for path in spec.inputs(cfg):
        key = input_key(cfg, path)
        if key in recorded:
            load = partial(stored_listing, cfg, spec.name, key, recorded[key])
            cache.listed_before(path, recorded[key], load)
        found = cache.state(path)
        if isinstance(found, Folder):
            listings[key] = found
            inputs[key] = found.digest
        else:
            inputs[key] = found
    config = {k: _plain(config_value(cfg, k)) for k in spec.config_keys}
    return Fingerprint(spec.version, config, inputs, listings, spec.record(cfg), listing_dir(cfg))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def state_file(cfg: Config, name: str) -> Path:
    return OutputLayout(cfg.output.root).state / f"{name}.json"


def listing_dir(cfg: Config) -> Path:
    """Input folders' listings, each in a file named by its digest: a listing two stages
    record (the images) is kept once, and its file says which listing it is."""
    return OutputLayout(cfg.output.root).state / "listings"


def legacy_listing_file(cfg: Config, name: str) -> Path:
    """Where a stage's listings were kept, all in one file, before `listing_dir`."""
    return OutputLayout(cfg.output.root).state / f"{name}.inputs.json"


def stored_state(cfg: Config, name: str) -> dict[str, Any] | None:
    path = state_file(cfg, name)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    state["inputs"] = {input_key(cfg, k): v for k, v in state.get("inputs", {}).items()}
    return state


def stored_listing(cfg: Config, name: str, key: str, digest: str) -> dict[str, str] | None:
    """The listing of the stage's input folder `key` whose digest is `digest`, as kept
    (`listing_dir`, or the stage's one file of earlier versions); None when it is not
    kept, or damaged: the folder is then walked whole."""
    path = listing_dir(cfg) / f"{digest}.json"
    legacy = legacy_listing_file(cfg, name)
    try:
        if path.exists():
            return json.loads(path.read_text())
        if legacy.exists():
            found = json.loads(legacy.read_text())
            return {input_key(cfg, k): v for k, v in found.items()}.get(key)
    except ValueError:  # not JSON (a disk that lost its tail)
        return None
    return None


def save_state(cfg: Config, name: str, fp: Fingerprint, run_id: str) -> None:
    with atomic_path(state_file(cfg, name)) as tmp:
        tmp.write_text(json.dumps({**fp.to_json(), "run_id": run_id}, indent=1, default=str))
    # Its listings are kept by digest now (stage_listings).
    legacy_listing_file(cfg, name).unlink(missing_ok=True)
    drop_unrecorded_listings(cfg)


def drop_unrecorded_listings(cfg: Config) -> None:
    """Remove the kept listings no stage's state records any more (a listing staged for a
    run that failed, or outdated by a later run)."""
    folder, state = listing_dir(cfg), OutputLayout(cfg.output.root).state
    if not folder.is_dir():
        return
    recorded = set()
    for path in state.glob("*.json"):
        if path.name.endswith(".inputs.json"):  # legacy listings, not states
            continue
        try:
            recorded.update(str(v) for v in json.loads(path.read_text()).get("inputs", {}).values())
        except (OSError, ValueError, AttributeError):
            return  # a state file that cannot be read may record any of them: keep all
    for path in folder.glob("*.json"):
        if path.stem not in recorded:
            path.unlink(missing_ok=True)


def changes(
    stored: dict[str, Any], fp: Fingerprint, old_listing: Callable[[str, str], dict | None]
) -> tuple[list[str], list[str]]:
    """(output-defining changes: version and config keys, input changes), as sentences.
    `old_listing(key, digest)` reads a recorded folder listing back, only when the cache
    cannot say what changed in it (at a million images it is a file of tens of MB)."""
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
        # A listing the cache brought up to date from the recorded one knows what changed;
        # otherwise the recorded one is read (at a million files, seconds) and compared.
        counts = fp.listings[path].changes_since(old) if path in fp.listings else None
        if counts is None and path in fp.listings and (a := old_listing(path, old)) is not None:
            b = fp.listings[path].listing
            counts = (
                sum(1 for k in a.keys() & b.keys() if a[k] != b[k]),
                len(b.keys() - a.keys()),
                len(a.keys() - b.keys()),
            )
        if counts is not None:
            changed, added, removed = counts
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
    # Outer paths first, the deep pattern first: on object storage a folder's one
    # recursive listing then answers the shallow pattern and every path inside it.
    for path in sorted(paths, key=lambda p: len(p.parts)):
        if isinstance(path, Path) and path.is_dir():
            tables.update(_local_tables(path))
        elif path.is_dir():
            tables.update([*path.glob("*/*.parquet"), *path.glob("*.parquet")])
        elif path.suffix == ".parquet" and path.is_file():
            tables.add(path)
    return {t: why for t in sorted(tables) if (why := table_damage(t))}


def _local_tables(folder: Path) -> list[Path]:
    """The .parquet files in a local folder and its sub-folders, from directory entries
    alone: a pose-map folder of a million files is passed over in a fraction of a second
    (pathlib's glob built a path per entry)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".parquet") and entry.is_file():
                found.append(Path(entry.path))
            elif entry.is_dir():
                with os.scandir(entry.path) as inner:
                    found += [Path(e.path) for e in inner
                              if e.name.endswith(".parquet") and e.is_file()]  # fmt: skip
    return found


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
    stored = stored_state(cfg, spec.name)
    fp = take_fingerprint(spec, cfg, cache, stored)
    if spec.name in plan.forced:
        return Decision(spec.name, "run", ["asked for (--force, --from or --only)"], True, fp)
    tables = spec.tables(cfg) if spec.tables else [*spec.outputs(cfg), *spec.previous(cfg)]
    damaged = unreadable_tables(tables)
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
    defining, inputs = changes(stored, fp, partial(stored_listing, cfg, spec.name))
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
