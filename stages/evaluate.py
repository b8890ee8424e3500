"""Evaluate stage: score every checkpoint of a published-layout generation directory with
SSIM, PSNR, IS, DS, PCKh, LPIPS and FID; per-image Parquet, per-(checkpoint, direction,
metric) summaries, the published legacy CSVs. Pixel metrics run as Ray Data tasks over
batches, each network metric in a model pool (one actor per GPU, else per CPU node); both
resume from what an interrupted run wrote. The generation root may be an s3:// prefix:
it is listed once, workers read each image through the storage layer, and an up-to-date
check compares the listing's sizes and mtimes, never the objects."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.cluster.runtime import init_ray, package_versions
from pipeline.cluster.stage_result import StageResult
from pipeline.core import storage
from pipeline.core.atomic_io import write_bytes_atomic, write_table
from pipeline.core.config import Config, StorageConfig
from pipeline.core.content_state import ContentCache, listed_digest
from pipeline.core.errors import DataError, WeightsError
from pipeline.core.layout import (
    PAIRS_INDEX_SCHEMA,
    DatasetLayout,
    EvaluationLayout,
    GenerationLayout,
    OutputLayout,
    generation_pairs,
)
from pipeline.core.legacy_csv import write_csv
from pipeline.core.object_path import data_path
from pipeline.core.paths import checkpoint_sort_key, relative_under
from pipeline.core.resumable import ResumableTable
from pipeline.metrics.registry import (
    SPECS,
    build_scorer,
    expand_metrics,
    legacy_files,
    weights_for,
)
from pipeline.metrics.scoring import (
    condition_copies,
    real_images,
    score_network_batch,
    score_pixel_batch,
)
from pipeline.metrics.summary import (
    PER_IMAGE_SCHEMA,
    SUMMARY_SCHEMA,
    legacy_tables,
    sort_key,
    summarise,
)
from stages.spec import CACHED_STORAGE_KEYS, OUTPUT_ROOT, STREAMED_KEYS, StageSpec

UNIT_KEY = ["checkpoint", "direction", "name"]
UNIT_COLUMNS = [*UNIT_KEY, "real_path", "fake_path", "inputs"]


class MetricActor:
    """Ray Data actor: one metric's network, built once per actor; a batch of units in,
    per-image rows out."""

    def __init__(
        self,
        metric: str,
        weights,
        gen_root: str,
        storage_cfg: StorageConfig,
        actors_per_node: int,
    ):
        from pipeline.cluster.ray_pool import use_node_threads
        from pipeline.cluster.runtime import current_node

        use_node_threads(actors_per_node)
        self.kind, self.gen_root, self.storage_cfg = SPECS[metric].kind, gen_root, storage_cfg
        self.scorer = build_scorer(metric, weights)
        self.node = current_node()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = score_network_batch(
            self.scorer, self.gen_root, batch.to_dict("records"), self.kind, self.storage_cfg
        )
        return rows_frame(rows).assign(node=self.node)


def pixel_scores(
    batch: pd.DataFrame, gen_root: str, metrics: list[str], storage_cfg: StorageConfig
) -> pd.DataFrame:
    """Ray Data task: SSIM and/or PSNR rows of a batch of pairs, one `metric` column."""
    from pipeline.cluster.runtime import current_node

    scored = score_pixel_batch(gen_root, batch.to_dict("records"), metrics, storage_cfg)
    return pd.concat(
        [rows_frame(rows).assign(metric=m, node=current_node()) for m, rows in scored.items()],
        ignore_index=True,
    )


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in PER_IMAGE_SCHEMA.names:
        if col not in frame.columns:
            frame[col] = None
    return frame[PER_IMAGE_SCHEMA.names]


def metric_output(paths: EvaluationLayout, metric: str) -> ResumableTable:
    return ResumableTable(paths.per_image(metric), PER_IMAGE_SCHEMA, UNIT_KEY, flush_rows=1 << 30)


def file_digests(
    gen_root: str, files: list[storage.FileState], cache: ContentCache
) -> Callable[[str], str]:
    """Relative path -> what a rerun compares: a local file's content digest (stat-keyed
    cache), an object's listed URI, size and mtime (an up-to-date check never GETs one)."""
    if not storage.is_local(gen_root):
        listed = {f.rel: listed_digest(f.path, f.size, f.mtime_ns) for f in files}
        return lambda rel: listed.get(rel, "missing")

    def by_content(rel: str) -> str:
        try:
            return cache.digest(os.path.join(gen_root, rel))
        except OSError:
            return "missing"

    return by_content


def unit_digests(units: pd.DataFrame, digest: Callable[[str], str]) -> list[str]:
    """Per unit, the digests of its real and generated files."""

    def of(rel) -> str:
        return digest(rel) if isinstance(rel, str) else "none"

    return [f"{of(r)}|{of(f)}" for r, f in zip(units["real_path"], units["fake_path"],
                                               strict=True)]  # fmt: skip


def pending_units(units: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    """Units (checkpoint, direction, name) not scored from their current files yet: a rerun
    resumes, and a regenerated image is scored again (scores written before digests were
    recorded are kept). Ordered by name: the units of one test pair (each checkpoint's
    image, the condition copied, both directions) share their real images, so a batch
    that holds them all reads each image once (half the reads, GETs on object storage)."""
    now = units[[*UNIT_KEY, "inputs"]].rename(columns={"inputs": "inputs_now"})
    kept = done.merge(now, on=UNIT_KEY)
    kept = kept[(kept["inputs"].isna() | (kept["inputs"] == kept["inputs_now"])).to_numpy()]
    merged = units.merge(kept[UNIT_KEY], on=UNIT_KEY, how="left", indicator=True)
    todo = units[UNIT_COLUMNS][(merged["_merge"] == "left_only").to_numpy()]
    return todo.sort_values("name", kind="stable").reset_index(drop=True)


def finish_output(output: ResumableTable, units: pd.DataFrame) -> pd.DataFrame:
    """The metric's table over the current units only (images gone from the generation
    directory leave it), written when it changed."""
    done = output.done()
    table = done.merge(units[UNIT_KEY], on=UNIT_KEY).sort_values(UNIT_KEY, key=sort_key)
    table = table.reset_index(drop=True)
    if output.unmerged or not output.path.exists() or len(table) != len(done):
        output.commit(table)
    return table


def run_pixel_metrics(metrics, gen_root, pairs, paths, cfg) -> dict[str, pd.DataFrame]:
    """Score `pairs` with the pixel `metrics` in Ray tasks (one pass loads each pair once for
    all of them), resuming what an earlier run scored."""
    from pipeline.cluster.batch_stream import Tasks, run_batches

    ok = pairs[pairs["error"].isna()]
    outputs = {m: metric_output(paths, m) for m in metrics}
    pending = {m: pending_units(ok, o.done()) for m, o in outputs.items()}
    todo = pd.concat(pending.values(), ignore_index=True).drop_duplicates(UNIT_KEY)
    todo = todo.sort_values("name", kind="stable")
    wanted = {m: set(map(tuple, p[UNIT_KEY].to_numpy())) for m, p in pending.items()}

    def record(part: pd.DataFrame) -> int:
        for m, rows in part.groupby("metric"):
            keep = [tuple(k) in wanted[m] for k in rows[UNIT_KEY].to_numpy()]
            outputs[m].add(rows[keep].drop(columns="metric"))
        return int(part["metric"].eq(metrics[0]).sum())

    if len(todo):
        kwargs = {"gen_root": gen_root, "metrics": list(metrics), "storage_cfg": cfg.storage}
        step = Tasks(pixel_scores, kwargs, batch_format="pandas", num_cpus=1)
        run_batches(todo, cfg.evaluate.pixel_batch_size, [step], label="ssim/psnr", unit="pair",
                    handle=record, outputs=list(outputs.values()),
                    stall_timeout=cfg.ray.stall_timeout_s)  # fmt: skip
    return {m: finish_output(o, ok) for m, o in outputs.items()}


def run_network_metric(metric, weights, gen_root, units, paths, cfg) -> pd.DataFrame:
    """Score `units` with `metric`'s model pool, resuming what an earlier run scored."""
    from pipeline.cluster.batch_stream import Actors, run_batches
    from pipeline.cluster.ray_pool import plan_pool

    output = metric_output(paths, metric)
    todo = pending_units(units, output.done())
    if len(todo):
        kwargs = {"metric": metric, "weights": weights, "gen_root": gen_root,
                  "storage_cfg": cfg.storage}  # fmt: skip
        step = Actors(MetricActor, plan_pool(cfg.evaluate.concurrency), kwargs,
                      batch_format="pandas")  # fmt: skip
        run_batches(todo, cfg.evaluate.batch_size, [step], label=metric, unit="img",
                    outputs=[output], stall_timeout=cfg.ray.stall_timeout_s)  # fmt: skip
    return finish_output(output, units)


def targets_pckh(cfg: Config, gen_root: str, pairs: pd.DataFrame) -> dict | None:
    """Per direction, how well the estimator finds the real targets' keypoints: its PCKh
    against the dataset's reference keypoints (the keypoints stage's QA table), when the
    generation is the pipeline's own and a reference is configured; None otherwise (the
    real row's PCKh is then 1 by definition)."""
    from pipeline.core.atomic_io import read_table
    from pipeline.pose.keypoint_qa import targets_pckh as pckh_of

    qa_table = DatasetLayout(cfg.dataset.root).keypoints_qa
    own = storage.absolute(OutputLayout(cfg.output.root).generated)
    if not cfg.keypoints.compare or gen_root != own:
        return None
    if not qa_table.exists():
        return None
    qa = read_table(qa_table)
    out = {}
    # Each target once per test pair, not once per checkpoint that generated it.
    for direction, part in pairs.drop_duplicates(["direction", "name"]).groupby("direction"):
        ids = [GenerationLayout.parse_name(n)[1] for n in part["name"]]
        out[direction] = (*pckh_of(qa, ids), Path(cfg.keypoints.compare).name)
    return out


def checkpoint_files(ckpts: list[str], cfg: Config) -> dict[str, dict]:
    """netG_<ckpt>.pth of each scored checkpoint where it can be found, with its sha256."""
    from pipeline.core.weights import file_sha256

    dirs = [d for d in (cfg.weights.checkpoint_dir, OutputLayout(cfg.output.root).checkpoints) if d]
    out = {}
    for c in ckpts:
        for d in dirs:
            path = data_path(d) / f"netG_{c}.pth"
            if path.is_file():
                where = storage.relative_under(path, cfg.output.root)
                out[c] = {
                    "path": f"output:{where}" if where else storage.absolute(path),
                    "sha256": file_sha256(path),
                }
                break
    return out


def check_save_modes(modes: dict[str, str], paths: EvaluationLayout, allow_mixed: bool) -> None:
    """Refuse one table over images saved in different modes (unless `allow_mixed`: then the
    outputs say so), and a resumed evaluation whose kept scores came from another mode."""
    from pipeline.generator.save_modes import mixed_modes_message

    mixed = mixed_modes_message(modes)
    if mixed and not allow_mixed:
        raise DataError(
            f"{mixed}. Evaluate each save mode into its own --out, or pass "
            "--allow-mixed-save-modes to score them together (flagged "
            "everywhere)."
        )
    kept = {}
    if paths.meta.exists():
        kept = json.loads(paths.meta.read_text()).get("save_modes", {})
    changed = {c: (kept[c], m) for c, m in modes.items() if c in kept and kept[c] != m}
    if changed:
        listed = ", ".join(f"{c}: {old} -> {new}" for c, (old, new) in changed.items())
        raise DataError(
            f"{paths.root} keeps scores of images saved in another mode "
            f"({listed}); resuming would mix them. Use a new --out or delete "
            "that directory."
        )


def score_metrics(
    cfg: Config,
    names: list[str],
    gen_root: str,
    files: list[storage.FileState],
    pairs: pd.DataFrame,
    paths: EvaluationLayout,
) -> tuple[dict[str, pd.DataFrame], dict[str, str], pd.DataFrame]:
    """Each metric's per-image table over the pairs (pair metrics also score the condition
    copied, image metrics the real targets), metrics without weights skipped with the
    reason; (tables, skipped, the pairs without an error). `files`: the root's listing."""
    per_image: dict[str, pd.DataFrame] = {}
    skipped: dict[str, str] = {}
    with ContentCache(OutputLayout(cfg.output.root).content_cache) as cache:
        digest = file_digests(gen_root, files, cache)
        pairs["inputs"] = unit_digests(pairs, digest)
        copies = condition_copies(pairs)
        copies["inputs"] = unit_digests(copies, digest)
    ok_pairs = pairs[pairs["error"].isna()]
    # Pair metrics also score the condition copied: the floor beside every checkpoint.
    with_copies = pd.concat([ok_pairs, copies], ignore_index=True)
    pixel = [m for m in names if SPECS[m].kind == "pixel"]
    if pixel:
        per_image.update(run_pixel_metrics(pixel, gen_root, with_copies, paths, cfg))
    for metric in (m for m in names if SPECS[m].kind != "pixel"):
        try:
            weights = weights_for(metric, cfg.evaluate.network_weights, cfg.weights.dir,
                                  cfg.keypoints)  # fmt: skip
        except WeightsError as exc:
            skipped[metric] = str(exc)
            continue
        units = with_copies
        if SPECS[metric].kind == "image":
            units = pd.concat([ok_pairs, real_images(pairs)], ignore_index=True)
        per_image[metric] = run_network_metric(metric, weights, gen_root, units, paths, cfg)
    return per_image, skipped, ok_pairs


def write_legacy(legacy: dict[str, pd.DataFrame], root: Path) -> dict[str, pd.DataFrame]:
    """Write the published score CSVs; remove those this run does not make (a stale CSV
    would contradict the skip)."""
    for fname in legacy_files():
        if fname in legacy:
            write_csv(legacy[fname], root / fname, list(legacy[fname].columns))
        elif (root / fname).exists():
            (root / fname).unlink()
    return legacy


def recorded_root(gen_root: str, paths: EvaluationLayout, outputs: OutputLayout) -> str:
    """The generation root as evaluation.json keeps it: relative to the evaluation folder
    when both sit in the output root (a copied root's report then shows its own images),
    else absolute, or the URI."""
    if not storage.is_local(gen_root) or not isinstance(paths.root, Path):
        return gen_root
    if relative_under(gen_root, outputs.root) and relative_under(paths.root, outputs.root):
        return os.path.relpath(gen_root, paths.root.resolve())
    return gen_root


def run_evaluate(
    cfg: Config,
    generated: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    metrics: list[str] | None = None,
    allow_mixed_save_modes: bool = False,
) -> StageResult:
    """Score a published-layout generation directory into `out` (default O/evaluation)."""
    from pipeline.generator.save_modes import (
        checkpoint_save_modes,
        overall_save_mode,
        save_mode_text,
    )

    outputs = OutputLayout(cfg.output.root)
    # As the workers get it: a local folder absolute, an object-store prefix its URI.
    gen_root = storage.absolute(generated or outputs.generated, cfg.storage)
    paths = EvaluationLayout(out or outputs.evaluation)
    names = expand_metrics(metrics or cfg.evaluate.metrics)
    mode = cfg.evaluate.network_weights
    result = StageResult("evaluate")
    files = storage.list_files(gen_root, storage_cfg=cfg.storage)
    pairs = generation_pairs(gen_root, files)
    if pairs.empty:
        raise DataError(
            f"{gen_root}: no generated images under fake_images/iter_<ckpt>/fake_{{A,B}}/"
        )
    result.rows_in = len(pairs)
    result.errors = int(pairs["error"].notna().sum())
    ckpts = sorted(pairs["checkpoint"].unique(), key=checkpoint_sort_key)
    modes = checkpoint_save_modes(gen_root, ckpts, cfg.storage)
    check_save_modes(modes, paths, allow_mixed_save_modes)
    init_ray(cfg.ray)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_table(pairs, paths.pairs, PAIRS_INDEX_SCHEMA)

    per_image, skipped, ok_pairs = score_metrics(cfg, names, gen_root, files, pairs, paths)
    real_pckh = targets_pckh(cfg, gen_root, ok_pairs) if "pckh" in per_image else None
    real_measured = {"pckh": real_pckh} if real_pckh else None
    summary = summarise(
        per_image, skipped, ok_pairs if len(ok_pairs) else pairs, mode, real_measured
    )
    write_table(summary, paths.summary, SUMMARY_SCHEMA)
    legacy = write_legacy(legacy_tables(summary, per_image), paths.root)
    meta = {
        "generated": recorded_root(gen_root, paths, outputs),
        "metrics": names,
        "network_weights": mode,
        "skipped": skipped,
        "checkpoints": ckpts,
        "checkpoint_files": checkpoint_files(ckpts, cfg),
        "save_mode": overall_save_mode(modes),
        "save_modes": modes,
        "save_mode_text": save_mode_text(modes),
        "config_hash": cfg.hash(),
        "evaluate_config": cfg.to_dict()["evaluate"],
        "packages": package_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    write_bytes_atomic(paths.meta, json.dumps(meta, indent=2).encode())
    result.rows_out = int(sum(len(t) for t in per_image.values()))
    result.skipped = len(skipped)
    result.outputs = {
        "summary": str(paths.summary),
        "per_image": str(paths.root / "per_image"),
        "meta": str(paths.meta),
        **{f: str(paths.root / f) for f in legacy},
    }
    result.notes = [f"images: {save_mode_text(modes)}"]
    result.notes += [f"{m} skipped: {r}" for m, r in skipped.items()]
    if mode == "random":
        result.notes.append("network metrics used RANDOM weights: their scores are not meaningful")
    return result.finish()


STAGE = StageSpec(
    name="evaluate",
    version=1,
    run=lambda cfg, fresh: run_evaluate(cfg),
    does=lambda cfg: (
        f"score the generated images with {', '.join(cfg.evaluate.metrics)} "
        "(metrics whose weights are missing are skipped and say so); scores of unchanged "
        "images are kept"
    ),
    config_keys=(
        "evaluate.metrics",
        "evaluate.network_weights",
        # PCKh estimates the keypoints of real and generated images with these.
        "keypoints.estimator",
        # The real targets' PCKh is measured against this reference (the QA table).
        "keypoints.compare",
        "keypoints.checkpoint",
        "keypoints.min_score",
        "keypoints.min_visibility",
    ),
    ignored_keys={
        **CACHED_STORAGE_KEYS,
        **STREAMED_KEYS,
        **OUTPUT_ROOT,
        "dataset.root": "where the keypoints QA table is (an input, digested by content)",
        "evaluate.batch_size": "images per network call: batching only",
        "evaluate.pixel_batch_size": "pairs per SSIM/PSNR task: batching only",
        "evaluate.concurrency": "actors per metric: scheduling only",
        "weights.dir": "where metric weights are looked up by name",
        "weights.checkpoint_dir": "where evaluation.json finds each checkpoint's file to "
        "record its path and digest; the generated images are the inputs",
    },
    inputs=lambda cfg: [
        OutputLayout(cfg.output.root).generated,
        DatasetLayout(cfg.dataset.root).keypoints_qa,
    ],
    outputs=lambda cfg: [EvaluationLayout(OutputLayout(cfg.output.root).evaluation).summary],
    previous=lambda cfg: [OutputLayout(cfg.output.root).evaluation],
)
