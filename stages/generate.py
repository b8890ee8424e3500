"""Generate stage: every generator checkpoint over every test pair in both directions
(A->B with map pair (A, B), B->A with (B, A)), NetG in a Ray Data actor pool, written in
the published test-output layout with a generation manifest; reruns resume. Jobs with the
same checkpoint and inputs (B->A of (b, a) is A->B of (a, b)) run once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.cluster.batch_stream import (
    BatchSteps,
    choose_executor,
    consume,
    stream_in_process,
    stream_ray,
)
from pipeline.cluster.stage_result import StageResult
from pipeline.core import storage
from pipeline.core.config import Config, dataset_path
from pipeline.core.content_state import ContentCache
from pipeline.core.errors import DataError
from pipeline.core.imaging import FRAME
from pipeline.core.layout import DatasetLayout, OutputLayout
from pipeline.core.object_path import data_path
from pipeline.core.resumable import ResumableTable
from pipeline.generator.generation_batches import (
    Generator,
    load_inputs,
    map_transport,
    write_outputs,
)
from pipeline.generator.generation_plan import (
    IDENTITY_KEY,
    MANIFEST,
    MANIFEST_KEY,
    TEST_SPLIT,
    MapSources,
    done_rows,
    error_reasons,
    generation_jobs,
    identical_jobs,
    manifest_output,
    pending_jobs,
    reals_to_write,
    remove_outputs,
    same_inputs,
    stale_rows,
    test_pair_blocks,
    with_checkpoint,
    with_input_states,
    write_identical,
)
from pipeline.generator.save_modes import SAVE_MODES, record_generation, save_mode
from stages.spec import CACHED_STORAGE_KEYS, DATASET_ROOT, OUTPUT_ROOT, STREAMED_KEYS, StageSpec

# --- the Ray wrapper -------------------------------------------------------------------


def default_checkpoints(cfg: Config) -> list[str]:
    if cfg.generate.checkpoints:
        return list(cfg.generate.checkpoints)
    ckpt_dir = OutputLayout(cfg.output.root).checkpoints
    if not ckpt_dir.is_dir():
        raise DataError(
            f"no --checkpoint given, generate.checkpoints is empty and {ckpt_dir} does "
            "not exist; train first or pass --checkpoint PATH"
        )
    return [str(ckpt_dir)]


def checkpoint_files(cfg: Config, checkpoints: list[str] | None) -> tuple[list[Path], list[str]]:
    """The checkpoint files to generate with and their ids; two files of one id fail here,
    naming them. Their contents are checked (`check_checkpoints`) once there is work."""
    from pipeline.core.weights import checkpoint_id, expand_checkpoints

    paths = expand_checkpoints(checkpoints or default_checkpoints(cfg), cfg.weights.checkpoint_dir)
    ids = [checkpoint_id(p) for p in paths]
    if len(set(ids)) < len(ids):
        raise DataError(
            f"checkpoints {[str(p) for p in paths]} repeat an id ({ids}): each id is one "
            "output folder fake_images/iter_<id>; pass each checkpoint once"
        )
    return paths, ids


def check_checkpoints(paths: list[Path], ngf: int) -> None:
    """A file that is not a NetG of `ngf` fails here, naming it, before any image is made.
    Not when every image is already made from the same file (the digest says so): loading
    a checkpoint costs the torch import."""
    from pipeline.generator.inference_api import check_checkpoint

    for path in paths:
        check_checkpoint(path, ngf)


def link_identical(
    todo: pd.DataFrame, manifest: pd.DataFrame, output: ResumableTable, out_dir: Path,
    result: StageResult,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Jobs whose identical job (same checkpoint and inputs) already has an image get it
    written from that one now; (the jobs left to run, those to write from a job of them)."""
    keys = todo[IDENTITY_KEY].drop_duplicates()
    done = same_inputs(done_rows(manifest.merge(keys, on=IDENTITY_KEY), out_dir), todo,
                       IDENTITY_KEY)  # fmt: skip
    todo, links = identical_jobs(todo, done)
    linked = write_identical(links, done, out_dir)
    if len(linked):
        output.add(linked)
        output.flush()
        result.rows_out += int((linked["status"] == "ok").sum())
        result.errors += int((linked["status"] == "error").sum())
    return todo, links


def generate_pending(
    cfg: Config, todo: pd.DataFrame, links: pd.DataFrame, output: ResumableTable,
    out_dir: Path, sparse: bool, label: str, result: StageResult,
) -> int:  # fmt: skip
    """Generate `todo` in this process or on Ray (`choose_executor`), recording each part's
    rows and the `links` made from it in `output` and counting them in `result`; returns
    the images generated."""
    from pipeline.cluster.ray_pool import plan_pool
    from pipeline.cluster.runtime import init_ray

    gc = cfg.generate
    root, generated = storage.absolute(cfg.dataset.root), 0
    executor = choose_executor(gc.executor, len(todo), gc.in_process_max_jobs,
                               gc.concurrency, cfg.ray.address)  # fmt: skip
    if f"ran {executor.reason}" not in result.notes:  # once, not per block of pairs
        result.notes.append(f"ran {executor.reason}")
    # The published script ran NetG in the default memory format; channels_last changes
    # the last bits, which the published save's truncation turns into grey levels.
    steps = BatchSteps(
        load=load_inputs, model_cls=Generator, write=write_outputs,
        batch_size=gc.batch_size,
        load_kwargs=dict(root=root, out_dir=str(out_dir), frame=FRAME, minmax=gc.minmax,
                         sparse=sparse),
        model_kwargs=dict(ngf=gc.ngf, dtype=gc.dtype, minmax=gc.minmax,
                          channels_last=gc.channels_last and not gc.minmax),
        write_kwargs=dict(out_dir=str(out_dir), minmax=gc.minmax),
    )  # fmt: skip
    if executor.name == "ray":
        init_ray(cfg.ray)
        parts = stream_ray(todo, steps, plan_pool(gc.concurrency))
    else:
        parts = stream_in_process(todo, steps)

    def record(part: pd.DataFrame) -> int:
        # write_outputs recorded the part's rows; the links made from it are recorded here.
        nonlocal generated
        generated += int((part["status"] == "ok").sum())
        linked = write_identical(links, part, out_dir) if len(links) else part[:0]
        output.add(linked)
        for rows in (part, linked):
            result.rows_out += int((rows["status"] == "ok").sum())
            result.errors += int((rows["status"] == "error").sum())
        return len(part)

    # An interrupted run still records what it wrote, so a rerun resumes there.
    consume(
        parts,
        total=len(todo),
        label=label,
        unit="img",
        handle=record,
        outputs=[output],
        stall_timeout=cfg.ray.stall_timeout_s,
    )
    return generated


def plan_block(
    cfg: Config, pairs: pd.DataFrame, paths: list[Path], ids: list[str],
    manifest: pd.DataFrame, mode: str, out_dir: Path, cache: ContentCache, maps: MapSources,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """(the pending jobs of every checkpoint, the stale manifest rows) of a block of test
    pairs, against `manifest`'s rows of the same pair indexes."""
    root = storage.absolute(cfg.dataset.root)
    # Planning asks about every input and output file: on object storage each folder is
    # listed once instead of a HEAD per file. Nothing else writes here until it is done.
    with storage.remembering():
        jobs = maps(generation_jobs(pairs))
        jobs = with_input_states(jobs, root, cache)
        per_ckpt = [
            with_checkpoint(jobs, c, cache.digest(p), mode).assign(checkpoint_path=str(p))
            for p, c in zip(paths, ids, strict=True)
        ]
        cache.save()
        stale = stale_rows(manifest, pd.concat(per_ckpt, ignore_index=True), ids)
        current = manifest.drop(stale.index)
        todo = [pending_jobs(j, current, c, out_dir) for j, c in zip(per_ckpt, ids, strict=True)]
    return pd.concat(todo, ignore_index=True), stale


def run_generate(
    cfg: Config,
    checkpoints: list[str] | None = None,
    out: str | None = None,
    pairs_file: str | None = None,
    limit: int | None = None,
    dedup: bool = True,
    dry_run: bool = False,
) -> StageResult:
    """Generate every pending (checkpoint, direction, pair) image; see the module doc.
    `dedup` False runs identical jobs again (for benchmarks of the deduplication);
    `dry_run` plans every pair and says what would be done, writing and removing nothing."""
    from stages.posemaps import describe_posemap_kind, recorded_posemap_kind

    gc = cfg.generate
    root = storage.absolute(cfg.dataset.root)
    out_dir = data_path(out or OutputLayout(cfg.output.root).generated).resolve()
    result = StageResult(
        "generate", outputs={"generated": str(out_dir), "manifest": str(out_dir / MANIFEST)}
    )
    paths, ids = checkpoint_files(cfg, checkpoints)
    output = manifest_output(out_dir)
    manifest = output.done()
    mode = save_mode(gc.minmax)
    maps = DatasetLayout(root).posemap_dir(TEST_SPLIT)
    kind = recorded_posemap_kind(maps) if cfg.posemaps.export else None
    sparse = map_transport(gc.sparse_maps, kind)
    maps_text = describe_posemap_kind(kind)
    label = f"generate ({len(paths)} checkpoint(s))"
    blocks = test_pair_blocks(root, pairs_file or (gc.pairs and dataset_path(cfg, gc.pairs)), limit)
    pairs_seen, generated, stale_removed, pending, checked = 0, 0, 0, 0, False
    map_sources = MapSources(root, cfg.posemaps.export)

    def remove_stale(manifest: pd.DataFrame, stale: pd.DataFrame) -> pd.DataFrame:
        nonlocal stale_removed
        stale_removed += len(stale)
        manifest = remove_outputs(manifest, stale, out_dir)
        output.commit(manifest)
        return manifest

    # A block of test pairs at a time: planned, then generated, so that the driver holds
    # one block's jobs however many pairs there are.
    with ContentCache(OutputLayout(cfg.output.root).content_cache, readonly=dry_run) as cache:
        for pairs in blocks:
            lo, pairs_seen = pairs_seen, pairs_seen + len(pairs)
            block = manifest[manifest["index"].between(lo, pairs_seen - 1)]
            todo, stale = plan_block(cfg, pairs, paths, ids, block, mode, out_dir, cache,
                                     map_sources)  # fmt: skip
            result.rows_in += len(pairs) * 2 * len(paths)
            result.skipped += len(pairs) * 2 * len(paths) - len(todo)
            pending += len(todo)
            if dry_run:
                stale_removed += len(stale)
            elif len(stale) or len(todo):
                if len(stale):
                    manifest = remove_stale(manifest, stale)
                if not checked and len(todo):
                    check_checkpoints(paths, gc.ngf)  # before anything is written
                    record_generation(out_dir, mode, ids, maps_text)
                    checked = True
                links = todo.iloc[:0]
                if dedup:
                    # Against every block: B->A of (b, a) may be in a block done before.
                    todo, links = link_identical(todo, manifest, output, out_dir, result)
                if not todo.empty:
                    todo = todo.assign(write_real=reals_to_write(todo, out_dir))
                    generated += generate_pending(cfg, todo, links, output, out_dir, sparse, label,
                                                  result)  # fmt: skip
                manifest = output.done()
    # Rows of pairs past the end of the table (it shrank) no longer describe a pair.
    stale = manifest[manifest["checkpoint"].isin(ids) & (manifest["index"] >= pairs_seen)]
    pairs_note = f"{len(paths)} checkpoint(s) x {pairs_seen} test pairs x 2 directions -> {out_dir}"
    if dry_run:
        result.notes += [
            pairs_note,
            f"dry run: {pending} image(s) to make (generated, or written from an identical "
            f"job), {stale_removed + len(stale)} earlier image(s) of changed or removed pairs "
            "to remove; nothing was written",
        ]
        return result.finish()
    if not checked:
        record_generation(out_dir, mode, ids, maps_text)
    if len(stale):
        manifest = remove_stale(manifest, stale)
    if stale_removed:
        result.notes.append(f"{stale_removed} earlier image(s) of changed or removed pairs removed")
    manifest = output.done().sort_values(MANIFEST_KEY, ignore_index=True)
    if output.unmerged or not output.path.exists():
        output.commit(manifest)
    result.notes.append(pairs_note)
    copied = result.rows_out - generated
    result.notes.append(
        f"{generated} image(s) generated, {copied} written from an identical job "
        "(same checkpoint and inputs: A->B of (a, b) is B->A of (b, a))"
    )
    result.notes.append(f"saved in {mode} mode: {SAVE_MODES[mode]}")
    transport = "coordinates" if sparse else "dense maps"
    result.notes.append(f"pose maps: {maps_text}, sent to the model as {transport}")
    if result.errors:
        reasons = error_reasons(manifest[manifest["checkpoint"].isin(ids)])
        if not result.rows_out and not result.skipped:
            # After the manifest is written: its error rows say which inputs to fix.
            raise DataError(
                f"all {result.errors} generation job(s) failed, nothing was generated (error "
                f"rows in {output.path}); the reasons: {reasons}"
            )
        result.notes.append(f"{result.errors} error row(s) in the manifest: {reasons}")
    return result.finish()


# --- CLI -------------------------------------------------------------------------------


def _generate_inputs(cfg: Config) -> list[Path]:
    layout = DatasetLayout(cfg.dataset.root)
    ckpts = [data_path(c) for c in cfg.generate.checkpoints] or [
        OutputLayout(cfg.output.root).checkpoints
    ]
    return [
        layout.pairs_table,
        layout.keypoints_table,
        *([layout.posemap_dir(TEST_SPLIT)] if cfg.posemaps.export else []),
        layout.images,
        *ckpts,
        *([dataset_path(cfg, cfg.generate.pairs)] if cfg.generate.pairs else []),
    ]


STAGE = StageSpec(
    name="generate",
    version=1,
    run=lambda cfg, fresh: run_generate(cfg),
    does=lambda cfg: (
        "generate every test pair in both directions with "
        + (", ".join(cfg.generate.checkpoints) or "every checkpoint of the training run")
        + f" (ngf {cfg.generate.ngf}, batches of {cfg.generate.batch_size}); images already "
        "made from the same inputs are kept"
    ),
    config_keys=(
        "generate.checkpoints",
        "generate.ngf",
        "generate.dtype",
        "generate.channels_last",
        "generate.minmax",
        "generate.pairs",
    ),
    ignored_keys={
        **CACHED_STORAGE_KEYS,
        **STREAMED_KEYS,
        **DATASET_ROOT,
        **OUTPUT_ROOT,
        "weights.checkpoint_dir": "where checkpoint ids are looked up; the files found are "
        "inputs, digested by content",
        "generate.batch_size": "jobs per batch: batching only",
        "generate.concurrency": "model actors: scheduling only",
        "generate.sparse_maps": "how the pose maps travel to the actors, not their values",
        "generate.executor": "in this process or on Ray: the outputs are identical",
        "generate.in_process_max_jobs": "when the in-process executor is picked: identical",
        "posemaps.export": "whether maps are read from the npz files or rendered from the "
        "keypoints rows they hold: the same maps; the one read is the input",
    },
    inputs=_generate_inputs,
    outputs=lambda cfg: [OutputLayout(cfg.output.root).manifest],
    previous=lambda cfg: [OutputLayout(cfg.output.root).generated],
)
