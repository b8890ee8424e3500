"""Report stage: a self-contained HTML report (images embedded, opens offline) and a
Markdown twin from an evaluation directory: metrics per checkpoint and direction, skipped
metrics with reasons, plots, best/median/worst image grids by SSIM, provenance. This
collects the content; stages/report_render.py renders and writes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cluster.stage_result import StageResult
from pipeline.core import storage
from pipeline.core.atomic_io import read_arrow_batches, read_table
from pipeline.core.config import Config, StorageConfig
from pipeline.core.errors import DataError
from pipeline.core.layout import (
    PAIRS_INDEX_SCHEMA,
    DatasetLayout,
    EvaluationLayout,
    GenerationLayout,
    OutputLayout,
)
from pipeline.core.object_path import DataPath, data_path
from pipeline.core.paths import checkpoint_sort_key
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.generator.save_modes import MIXED, SAVE_MODES, UNKNOWN
from pipeline.metrics.registry import BY_DEFINITION, COPY, REAL, SPECS
from pipeline.metrics.summary import PER_IMAGE_SCHEMA, SUMMARY_SCHEMA, generated_only
from stages.report_annotations import BATCH_ROWS, annotations_section
from stages.report_pipeline import stage_overview, training_check_section, training_figures
from stages.report_render import ROW_LABELS, Report, write_report
from stages.spec import OUTPUT_ROOT, STORAGE_KEYS, StageSpec


def format_cell(row: pd.Series) -> str:
    """mean ± std (n) for one summary row; a score by definition says so."""
    if row["status"] != "ok" or pd.isna(row["mean"]):
        return "–"
    if row["reason"] == BY_DEFINITION:
        return ("∞" if np.isinf(row["mean"]) else f"{row['mean']:.4g}") + " (by definition)"
    text = f"{row['mean']:.4g}"
    if pd.notna(row["std"]):
        text += f" ± {row['std']:.3g}"
    text += f" (n={int(row['n'])}"
    if row["errors"]:
        text += f", {int(row['errors'])} unscored"
    return text + ")"


def metrics_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide table, one column per scored metric: per checkpoint and direction, the generated
    images, then the real targets and the condition copied of that direction."""
    ok = summary[summary["status"] == "ok"]
    metrics = [m for m in SPECS if m in set(ok["metric"])]
    ok = ok.assign(cell=ok.apply(format_cell, axis=1))
    wide = ok.pivot_table(
        index=["checkpoint", "direction", "images"], columns="metric", values="cell",
        aggfunc="first",
    ).reindex(columns=metrics).fillna("–").reset_index()  # fmt: skip
    ckpts = sorted(set(generated_only(wide)["checkpoint"]), key=checkpoint_sort_key)
    rows = []
    for ckpt in ckpts:
        for direction in sorted(set(wide.loc[wide["checkpoint"] == ckpt, "direction"])):
            for source in (ckpt, REAL, COPY):
                hit = wide[(wide["checkpoint"] == source) & (wide["direction"] == direction)]
                rows += [{**r, "checkpoint": ckpt} for r in hit.to_dict("records")]
    table = pd.DataFrame(rows, columns=wide.columns)
    table["images"] = table["images"].map(ROW_LABELS)
    return table.reset_index(drop=True)


def scale_notes(summary: pd.DataFrame) -> list[str]:
    """Per checkpoint and direction, the two comparisons that say whether it transfers pose:
    PCKh against the real targets' and SSIM against copying the condition."""
    ok = summary[summary["status"] == "ok"].set_index(["checkpoint", "direction", "metric"])
    mean = ok["mean"]
    real_pckh = ok.loc[ok.index.get_level_values("checkpoint") == REAL, "reason"]
    notes = []
    for ckpt, direction in generated_only(summary)[["checkpoint", "direction"]].drop_duplicates(
    ).itertuples(index=False):  # fmt: skip
        parts = []
        pckh, real = mean.get((ckpt, direction, "pckh")), mean.get((REAL, direction, "pckh"))
        if pckh is not None and real:
            how = real_pckh.get((REAL, direction, "pckh"))
            parts.append(f"PCKh {pckh:.3f} = {pckh / real:.2f} × the real targets' ({real:.3f}, "
                         f"{how})")  # fmt: skip
        ssim, copy = mean.get((ckpt, direction, "ssim")), mean.get((COPY, direction, "ssim"))
        if ssim is not None and copy is not None:
            word = "above" if ssim > copy else "NOT above"
            parts.append(f"SSIM {ssim:.3f}, {word} copying the condition ({copy:.3f})")
        if parts:
            notes.append(f"Checkpoint {ckpt}, {direction[0]}→{direction[1]}: " + "; ".join(parts))
    return notes


def symmetric_note(summary: pd.DataFrame) -> list[str]:
    """Explain identical A→B and B→A rows: when the test pairs hold both (a, b) and (b, a),
    both directions generate the same set of images."""
    ok = generated_only(summary[summary["status"] == "ok"])
    wide = ok.pivot_table(index=["checkpoint", "metric"], columns="direction", values="mean")
    if {"AB", "BA"} <= set(wide.columns) and len(wide) and np.allclose(wide["AB"], wide["BA"]):
        return [
            "A→B and B→A agree because the test pairs contain every pair in both orders "
            "((a, b) and (b, a)), so both directions generate the same set of images."
        ]
    return []


def grid_rows(
    ssim: pd.DataFrame, pairs: pd.DataFrame, ckpt: str, direction: str, k: int
) -> dict[str, pd.DataFrame]:
    """The k best, median and worst pairs by SSIM of one checkpoint and direction."""
    part = ssim[
        (ssim["checkpoint"] == ckpt) & (ssim["direction"] == direction) & ssim["error"].isna()
    ]
    part = part.merge(
        pairs[["checkpoint", "direction", "name", "condition_path"]],
        on=["checkpoint", "direction", "name"],
        how="left",
    ).sort_values("value", ascending=False)
    mid = max(0, len(part) // 2 - k // 2)
    return {
        "best": part.head(k),
        "median": part.iloc[mid : mid + k],
        "worst": part.tail(k).iloc[::-1],
    }


def build_report(
    eval_dir: str | os.PathLike,
    name: str,
    grid_pairs: int = 3,
    generated: str | os.PathLike | None = None,
    poses: dict | None = None,
    storage_cfg: StorageConfig | None = None,
    plots: Path | None = None,
) -> Report:
    """Collect the report's content from an evaluation directory (the pure core). `poses`:
    file id -> (x, y, image height, image width) of the keypoints the generator was given,
    drawn as the target pose in the grids; `storage_cfg`: where an s3:// generation is;
    `plots`: where plots are kept by what they draw (report_figures.cached_plot)."""
    poses = poses or {}
    paths = EvaluationLayout(eval_dir)
    summary, meta = read_evaluation(paths, eval_dir)
    gen_root = storage.resolve(generated or scored_root(eval_dir, meta), storage_cfg)
    report = Report(title=f"Pose-transfer evaluation: {name}")
    report.warnings += header_warnings(summary, meta)
    report.save_mode = report_save_mode(meta)
    if meta.get("save_mode") in (MIXED, UNKNOWN, None):
        report.warnings.append(f"Images scored: {report.save_mode}")
    report.skipped = skipped_metrics(summary, meta)
    report.table = metrics_table(summary)
    report.notes += scale_notes(summary) + symmetric_note(summary)
    ckpts = sorted(generated_only(summary)["checkpoint"].unique(), key=checkpoint_sort_key)
    report.figures += metrics_figures(summary, ckpts, plots)
    pairs = read_table(paths.pairs, PAIRS_INDEX_SCHEMA) if paths.pairs.exists() else None
    images = gen_root if storage.exists(gen_root) else None
    if pairs is not None and images is not None:
        report.figures += gallery_figures(images, pairs, ckpts, poses, grid_pairs)
    if paths.per_image("ssim").exists():
        ssim = generated_only(read_table(paths.per_image("ssim"), PER_IMAGE_SCHEMA))
        report.figures += ssim_figures(ssim, pairs, images, ckpts, poses, grid_pairs, plots)
    else:
        report.warnings.append(
            "SSIM was not scored, so there are no SSIM histogram and image grids."
        )
    report.provenance = provenance(meta, gen_root, eval_dir, ckpts)
    return report


def scored_root(eval_dir: str | os.PathLike, meta: dict) -> str:
    """The generation root evaluation.json records: a URI, or a folder relative to the
    evaluation's (or absolute)."""
    recorded = meta.get("generated", "")
    if not storage.is_local(recorded) or not storage.is_local(eval_dir):
        return recorded
    return str(Path(eval_dir) / recorded)


def read_evaluation(
    paths: EvaluationLayout, eval_dir: str | os.PathLike
) -> tuple[pd.DataFrame, dict]:
    """The summary table and evaluation.json ({} when absent)."""
    if not paths.summary.exists():
        raise DataError(f"{paths.summary} not found: run `evaluate --out {eval_dir}` first")
    summary = read_table(paths.summary, SUMMARY_SCHEMA)
    meta = json.loads(paths.meta.read_text()) if paths.meta.exists() else {}
    return summary, meta


def header_warnings(summary: pd.DataFrame, meta: dict) -> list[str]:
    if meta.get("network_weights") == "random" or (summary["weights"] == "random").any():
        return [
            "Network metrics were computed with RANDOM weights (test/benchmark mode): "
            "IS, DS, LPIPS and FID values below are meaningless."
        ]
    return []


def skipped_metrics(summary: pd.DataFrame, meta: dict) -> dict[str, str]:
    """Metric -> why it was not scored: evaluation.json's reasons first, then the summary's."""
    skipped = dict(meta.get("skipped", {}))
    for r in summary[summary["status"] == "skipped"].itertuples():
        skipped.setdefault(r.metric, r.reason)
    return skipped


def metrics_figures(
    summary: pd.DataFrame, ckpts: list[str], plots: Path | None = None
) -> list[tuple[str, str, bytes]]:
    """Each scored metric of the generated images across checkpoints."""
    from stages.report_figures import cached_plot, metrics_plot

    generated = generated_only(summary)
    scored = [m for m in SPECS if m in set(generated.loc[generated["status"] == "ok", "metric"])]
    if not scored:
        return []
    caption = "Each metric across checkpoints (band: ± std over images)"
    return [("metrics.png", caption, cached_plot(plots, metrics_plot, generated, scored, ckpts))]


def gallery_figures(
    gen_root: storage.Location,
    pairs: pd.DataFrame,
    ckpts: list[str],
    poses: dict,
    grid_pairs: int,
) -> list[tuple[str, str, bytes]]:
    """Per direction, the same test pairs generated by every checkpoint."""
    from stages.report_figures import gallery

    return [
        (
            f"gallery_{direction}.png",
            f"Gallery, {direction[0]}→{direction[1]}: the same test pairs generated by "
            f"every checkpoint ({', '.join(ckpts)})",
            gallery(gen_root, part, ckpts, poses, 2 * grid_pairs),
        )
        for direction, part in pairs.groupby("direction")
    ]


def ssim_figures(
    ssim: pd.DataFrame,
    pairs: pd.DataFrame | None,
    images: storage.Location | None,
    ckpts: list[str],
    poses: dict,
    grid_pairs: int,
    plots: Path | None = None,
) -> list[tuple[str, str, bytes]]:
    """The per-image SSIM histogram, and the best, median and worst pairs by SSIM of the
    last checkpoint in each direction (when the generated images are there to draw:
    `images`, their root; None when it is not there)."""
    from stages.report_figures import cached_plot, pair_grid, ssim_histogram

    histogram = cached_plot(plots, ssim_histogram, ssim, ckpts)
    figures = [("ssim_hist.png", "Per-image SSIM by checkpoint", histogram)]
    last = ckpts[-1]
    for direction in ("AB", "BA"):
        for label, rows in grid_rows(ssim, pairs, last, direction, grid_pairs).items():
            if len(rows) and images is not None:
                caption = (
                    f"{label.capitalize()} by SSIM: checkpoint {last}, "
                    f"{direction[0]}→{direction[1]}"
                )
                figures.append(
                    (f"grid_{last}_{direction}_{label}.png", caption,
                     pair_grid(images, rows, poses))
                )  # fmt: skip
    return figures


def provenance(
    meta: dict, gen_root: storage.Location, eval_dir: str | os.PathLike, ckpts: list[str]
) -> dict[str, str]:
    """Where the images and scores came from: folders, date, config hash, weights, save
    mode, each checkpoint's file and digest, package versions."""
    files = meta.get("checkpoint_files", {})
    return {
        "generated images": storage.absolute(gen_root),
        "evaluation": storage.absolute(eval_dir),
        "evaluated": meta.get("date", "unknown"),
        "config hash": meta.get("config_hash", "unknown"),
        "network weights": meta.get("network_weights", "unknown"),
        "image save mode": meta.get("save_mode", UNKNOWN),
        **{
            f"checkpoint {c}": (
                f"{files[c]['path']} (sha256 {files[c]['sha256']})"
                if c in files
                else "checkpoint file not found"
            )
            for c in ckpts
        },
        **{f"package {k}": v for k, v in meta.get("packages", {}).items()},
    }


def report_save_mode(meta: dict) -> str:
    """The header line: which save mode made the scored images and whether their numbers
    compare with the published ones. Evaluations written before the record say unknown."""
    if "save_mode_text" in meta:
        return meta["save_mode_text"]
    return f"{UNKNOWN} save mode: {SAVE_MODES[UNKNOWN]}"


def target_poses(cfg: Config, eval_dir: DataPath) -> dict:
    """file id -> (x, y, image height, image width) from the keypoints table, for the
    targets of the evaluated pairs only: the table may hold millions of rows."""
    table = DatasetLayout.of(cfg.dataset).keypoints_table
    pairs = EvaluationLayout(eval_dir).pairs
    if not table.exists() or not pairs.exists():
        return {}
    names = read_table(pairs, columns=["name"])["name"].unique()
    targets = sorted({t[1] for t in map(GenerationLayout.parse_name, names) if t})
    if not targets:
        return {}
    wanted = pa.array(targets, pa.string())
    cols = ["file_id", "x", "y", "img_h", "img_w", "error"]
    found = [
        b.filter(pc.and_(pc.is_in(b["file_id"], value_set=wanted), pc.is_null(b["error"])))
        for b in read_arrow_batches(table, KEYPOINTS_SCHEMA, cols, BATCH_ROWS)
    ]
    if not found:  # a table without rows
        return {}
    kp = pa.concat_tables(found).to_pandas()
    return {r[0]: r[1:5] for r in kp.itertuples(index=False, name=None)}


def run_report(
    cfg: Config,
    evaluation: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    generated: str | os.PathLike | None = None,
) -> StageResult:
    """The report of O/evaluation (or `evaluation`) into O/reports/<report.name> (or `out`)."""
    result = StageResult("report")
    outputs = OutputLayout(cfg.output.root)
    eval_dir = data_path(evaluation or outputs.evaluation)
    out = data_path(out or outputs.report(cfg.report.name))
    report = build_report(
        eval_dir, cfg.report.name, cfg.report.grid_pairs, generated, target_poses(cfg, eval_dir),
        cfg.storage, outputs.plot_cache,
    )  # fmt: skip
    report.stages = stage_overview(cfg)
    report.figures += training_figures(cfg)
    found = (training_check_section(cfg), annotations_section(cfg))
    report.sections += [s for s in found if s is not None]
    result.outputs = write_report(report, out)
    result.rows_in = int(np.sum(report.table is not None and len(report.table)))
    result.rows_out = len(report.figures)
    result.skipped = len(report.skipped)
    result.notes = [f"{m} skipped: {r}" for m, r in report.skipped.items()] + report.warnings
    return result.finish()


STAGE = StageSpec(
    name="report",
    version=1,
    run=lambda cfg, fresh: run_report(cfg),
    does=lambda cfg: f"write the report '{cfg.report.name}' (HTML and Markdown)",
    # keypoints.compare: the annotation section names the reference and compares with it.
    config_keys=("report.name", "report.grid_pairs", "keypoints.compare"),
    ignored_keys={
        **STORAGE_KEYS,
        **OUTPUT_ROOT,
        "storage.cache_dir": "where this host keeps plots by what they draw (a cache), not "
        "what the report holds",
        "dataset.root": "which dataset's annotation tables are summarised (only the keypoints "
        "table, whose poses the grids draw, is among the inputs)",
        "dataset.train_list": "the annotation section's split counts: summary only",
        "dataset.test_list": "the annotation section's split counts: summary only",
    },
    inputs=lambda cfg: [
        OutputLayout(cfg.output.root).evaluation,
        OutputLayout(cfg.output.root).manifest,
        # The target poses drawn in the grids.
        DatasetLayout.of(cfg.dataset).keypoints_table,
    ],
    outputs=lambda cfg: [OutputLayout(cfg.output.root).report(cfg.report.name) / "report.html"],
    previous=lambda cfg: [OutputLayout(cfg.output.root).report(cfg.report.name)],
)
