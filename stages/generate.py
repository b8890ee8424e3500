"""Generate stage: every generator checkpoint over every test pair in both directions
(A->B with map pair (A, B), B->A with (B, A)), NetG in a Ray Data actor pool, written in
the published test-output layout with a generation manifest; reruns resume. Jobs with the
same checkpoint and inputs (B->A of (b, a) is A->B of (a, b)) run once."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from pipeline.cluster.batch_stream import (
    EXECUTORS,
    BatchSteps,
    choose_executor,
    stream_in_process,
    stream_ray,
)
from pipeline.cluster.stage_result import StageResult
from pipeline.core.config import Config, dataset_path
from pipeline.core.content_state import ContentCache
from pipeline.core.errors import DataError
from pipeline.core.imaging import FRAME
from pipeline.core.layout import DatasetLayout, OutputLayout
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
    attach_map_sources,
    done_rows,
    error_reasons,
    generation_jobs,
    identical_jobs,
    input_digests,
    manifest_output,
    pending_jobs,
    read_test_pairs,
    remove_outputs,
    same_inputs,
    stale_rows,
    with_checkpoint,
    write_identical,
)
from pipeline.generator.save_modes import SAVE_MODES, record_generation, save_mode
from stages.spec import DATASET_ROOT, OUTPUT_ROOT, RAY_KEYS, StageSpec

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


def run_generate(
    cfg: Config,
    checkpoints: list[str] | None = None,
    out: str | None = None,
    pairs_file: str | None = None,
    limit: int | None = None,
    dedup: bool = True,
) -> StageResult:
    """Generate every pending (checkpoint, direction, pair) image; see the module doc.
    `dedup` False runs identical jobs again (for benchmarks of the deduplication)."""
    from tqdm import tqdm

    from pipeline.cluster.ray_pool import plan_pool
    from pipeline.cluster.runtime import init_ray
    from pipeline.core.weights import checkpoint_id, expand_checkpoints
    from pipeline.generator.inference_api import check_checkpoint
    from stages.posemaps import describe_posemap_kind, recorded_posemap_kind

    gc = cfg.generate
    root = str(Path(cfg.dataset.root).resolve())
    out_dir = Path(out or OutputLayout(cfg.output.root).generated).resolve()
    result = StageResult(
        "generate", outputs={"generated": str(out_dir), "manifest": str(out_dir / MANIFEST)}
    )
    paths = expand_checkpoints(checkpoints or default_checkpoints(cfg), cfg.weights.checkpoint_dir)
    for path in paths:  # fail on a bad checkpoint before any work, naming the file
        check_checkpoint(path, gc.ngf)
    ids = [checkpoint_id(p) for p in paths]
    if len(set(ids)) < len(ids):
        raise DataError(
            f"checkpoints {[str(p) for p in paths]} repeat an id ({ids}): each id is one "
            "output folder fake_images/iter_<id>; pass each checkpoint once"
        )

    pairs = read_test_pairs(root, pairs_file or (gc.pairs and dataset_path(cfg, gc.pairs)))
    if limit is not None:
        pairs = pairs.head(limit)
    jobs = attach_map_sources(generation_jobs(pairs), root)
    output = manifest_output(out_dir)
    manifest = output.done()
    mode = save_mode(gc.minmax)
    with ContentCache(OutputLayout(cfg.output.root).state / "content.sqlite") as cache:
        base = input_digests(jobs, root, cache)
        per_ckpt = [with_checkpoint(jobs, base, c, cache.digest(p), mode).assign(
                    checkpoint_path=str(p)) for p, c in zip(paths, ids, strict=True)]  # fmt: skip
    stale = stale_rows(manifest, pd.concat(per_ckpt, ignore_index=True), ids)
    if len(stale):
        manifest = remove_outputs(manifest, stale, out_dir)
        output.commit(manifest)
        result.notes.append(f"{len(stale)} earlier image(s) of changed or removed pairs removed")
    todo_parts = []
    for ckpt_jobs, ckpt in zip(per_ckpt, ids, strict=True):
        todo = pending_jobs(ckpt_jobs, manifest, ckpt, out_dir)
        result.skipped += len(jobs) - len(todo)
        todo_parts.append(todo)
    result.rows_in = len(jobs) * len(paths)
    todo = pd.concat(todo_parts, ignore_index=True)
    kind = recorded_posemap_kind(DatasetLayout(root).posemap_dir(TEST_SPLIT))
    sparse = map_transport(gc.sparse_maps, kind)
    maps_text = describe_posemap_kind(kind)
    record_generation(out_dir, mode, ids, maps_text)
    links, generated = todo.iloc[:0], 0
    if dedup:
        keys = todo[IDENTITY_KEY].drop_duplicates()
        done = same_inputs(done_rows(manifest.merge(keys, on=IDENTITY_KEY), out_dir), todo,
                           IDENTITY_KEY)  # fmt: skip
        todo, links = identical_jobs(todo, done)
        linked = write_identical(links, done, out_dir)
        if len(linked):
            output.add(linked)
            output.flush()
            result.rows_out = int((linked["status"] == "ok").sum())
            result.errors = int((linked["status"] == "error").sum())
    if not todo.empty:
        executor = choose_executor(gc.executor, len(todo), gc.in_process_max_jobs,
                                   gc.concurrency, cfg.ray.address)  # fmt: skip
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
        blocks = [todo.iloc[i : i + gc.batch_size] for i in range(0, len(todo), gc.batch_size)]
        if executor.name == "ray":
            init_ray(cfg.ray)
            parts = stream_ray(blocks, steps, plan_pool(gc.concurrency))
        else:
            parts = stream_in_process(blocks, steps)
        try:
            with tqdm(
                total=len(todo), desc=f"generate ({len(paths)} checkpoint(s))", unit="img"
            ) as bar:
                for part in parts:
                    # write_outputs recorded the part's rows; the links made from it are
                    # recorded here.
                    generated += int((part["status"] == "ok").sum())
                    linked = write_identical(links, part, out_dir) if len(links) else part[:0]
                    output.add(linked)
                    for rows in (part, linked):
                        result.rows_out += int((rows["status"] == "ok").sum())
                        result.errors += int((rows["status"] == "error").sum())
                    bar.update(len(part))
        finally:  # an interrupted run still records what it wrote, so a rerun resumes there
            output.flush()
    manifest = output.done().sort_values(MANIFEST_KEY, ignore_index=True)
    if output.unmerged or not output.path.exists():
        output.commit(manifest)
    result.notes.append(
        f"{len(paths)} checkpoint(s) x {len(pairs)} test pairs x 2 directions -> {out_dir}"
    )
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
    ckpts = [Path(c) for c in cfg.generate.checkpoints] or [
        OutputLayout(cfg.output.root).checkpoints
    ]
    return [
        layout.pairs_table,
        layout.keypoints_table,
        layout.posemap_dir(TEST_SPLIT),
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
        **RAY_KEYS,
        **DATASET_ROOT,
        **OUTPUT_ROOT,
        "weights.checkpoint_dir": "where checkpoint ids are looked up; the files found are "
        "inputs, digested by content",
        "generate.batch_size": "jobs per batch: batching only",
        "generate.concurrency": "model actors: scheduling only",
        "generate.sparse_maps": "how the pose maps travel to the actors, not their values",
        "generate.executor": "in this process or on Ray: the outputs are identical",
        "generate.in_process_max_jobs": "when the in-process executor is picked: identical",
    },
    inputs=_generate_inputs,
    outputs=lambda cfg: [OutputLayout(cfg.output.root).manifest],
    previous=lambda cfg: [OutputLayout(cfg.output.root).generated],
)


@click.command("generate")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    metavar="PATH|ID|DIR",
    help="A netG_<iter>.pth file, an iteration id (looked up in weights.checkpoint_dir), "
    "or a directory (every netG_<iter>.pth in it). Repeatable. Default: "
    "generate.checkpoints, else every netG_*.pth in <output.root>/train/checkpoints.",
)
@click.option(
    "--ngf",
    type=int,
    default=None,
    help="Generator width of the checkpoints (default generate.ngf).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default <output.root>/generated).",
)
@click.option(
    "--minmax/--no-minmax",
    default=None,
    help="Published save mode: the published test script's images (each image, real "
    "ones too, stretched to its own min..max, times 255 truncated, JPEG at PIL's "
    "defaults, quality 75), byte for byte on CPU fp32. Off (default "
    "generate.minmax): (x+1)/2 rounded, JPEG quality 95, NOT comparable with "
    "published numbers.",
)
@click.option(
    "--batch-size", type=int, default=None, help="Images per forward (default generate.batch_size)."
)
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Pairs table (.parquet) or legacy pairs CSV (default: the dataset's pairs table, "
    "else test_img_pairs.csv).",
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=None,
    help="Only the first N test pairs (quick runs).",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default=None,
    help="ray, in_process, or auto: this process for a run on one machine and device of at "
    "most generate.in_process_max_jobs images (default generate.executor).",
)
@click.pass_obj
def generate_command(
    obj, checkpoints, ngf, out, minmax, batch_size, pairs_file, limit, executor
) -> None:
    """Generate every test pair with one or more checkpoints, both directions.

    \b
    Inputs: the test pairs (tables/pairs.parquet, split test, or test_img_pairs.csv), the
    images under dataset.root, pose maps test_pose_maps/<fid>.npz (rendered from
    tables/keypoints.parquet when missing), generator checkpoints.
    Outputs under OUT, as the published test script lays them out (n = 0-based index of the
    pair in the pairs table, counted per direction):
      real_images/real_B/<n>@<fidB>.jpg             target images, A->B
      real_images/real_A/<n>@<fidA>.jpg             target images, B->A
      fake_images/iter_<ckpt>/fake_B/<n>@<fidB>.jpg generated A->B (condition A, map pair A,B)
      fake_images/iter_<ckpt>/fake_A/<n>@<fidA>.jpg generated B->A
      manifest.parquet                              one row per generated image, status ok/error
      generation.json                               save mode (published / default), pose maps
    Save modes: --minmax writes the published test script's images (comparable with the
    published numbers; byte for byte on CPU with generate.dtype fp32); the default (x+1)/2
    mapping at JPEG quality 95 is NOT comparable with published numbers. One OUT holds one mode.
    A job with the same checkpoint and inputs as another (B->A of (b, a) is A->B of (a, b))
    runs once; its file is a hard link (or copy) of the other's, with its own manifest row.
    One-hot or gaussian pose maps are told apart by posemaps' pose_maps.json (or the maps'
    dtype); generate.sparse_maps true/false overrides the transport picked from that.
    A rerun skips images already ok in the manifest; a bad input becomes an error row, and
    a run whose every job fails writes the manifest, then exits with code 2.
    NetG's input is 256 x 176: an image of another size is scaled to height 256, then
    centre-cropped or padded with white to width 176, as the published API does; its pose
    map goes with it, and its real image is written at that size.
    Where it runs (--executor, generate.executor): "ray" streams the batches through Ray
    Data, NetG in an actor pool of generate.concurrency actors (default: one per GPU, else
    one per CPU node); "in_process" runs NetG in this process with threads loading ahead
    and writing behind, no Ray start-up; "auto" (default) takes this process when the run
    stays on one machine and device with at most generate.in_process_max_jobs images, else
    Ray. The files are the same either way. Autocast generate.dtype (auto = bf16 on GPU,
    fp32 on CPU), channels_last.
    Example: run_pipeline.py generate --checkpoint out/train/checkpoints --ngf 8 --out out/generated
    """
    cfg = obj.override_flags(
        {
            "--ngf": ("generate.ngf", ngf),
            "--minmax/--no-minmax": ("generate.minmax", minmax),
            "--batch-size": ("generate.batch_size", batch_size),
            "--executor": ("generate.executor", executor),
        }
    )
    result = run_generate(cfg, list(checkpoints) or None, out, pairs_file, limit)
    click.echo(result.summary())
