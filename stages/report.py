"""Report stage: a self-contained HTML report (images embedded, opens offline) and a
Markdown twin from an evaluation directory: metrics per checkpoint and direction, skipped
metrics with reasons, plots, best/median/worst image grids by SSIM, provenance."""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cluster.stage_result import StageResult
from pipeline.core.atomic_io import read_table, write_bytes_atomic
from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.core.layout import PAIRS_INDEX_SCHEMA, DatasetLayout, EvaluationLayout, OutputLayout
from pipeline.core.paths import checkpoint_sort_key
from pipeline.generator.save_modes import MIXED, SAVE_MODES, UNKNOWN
from pipeline.metrics.registry import BY_DEFINITION, COPY, REAL, SPECS
from pipeline.metrics.summary import PER_IMAGE_SCHEMA, SUMMARY_SCHEMA, generated_only
from stages.report_pipeline import stage_overview, training_check_section, training_figures
from stages.spec import OUTPUT_ROOT, STORAGE_KEYS, StageSpec

METRIC_NOTES = {
    "ssim": "higher is better; skimage structural_similarity, 7x7 uniform window",
    "psnr": "higher is better (dB)",
    "is": "higher is better; one split, as published (no std)",
    "ds": "higher is better; torchvision SSD300-VGG16 COCO, whereas the published code used "
    "NVIDIA's SSD from torch hub, so values are not directly comparable",
    "pckh": "higher is better; pooled correct / valid keypoints (no std)",
    "lpips_alex": "lower is better",
    "lpips_vgg": "lower is better",
    "lpips_squeeze": "lower is better",
    "fid": "lower is better; generated set vs the real targets of the same direction (no std)",
}


@dataclass
class Report:
    """The report's content, rendered twice (HTML and Markdown)."""

    title: str
    save_mode: str = ""  # how the scored images were saved (header line)
    warnings: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None  # rows: checkpoint, direction, images; cols: metrics
    skipped: dict[str, str] = field(default_factory=dict)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file name, caption, png)
    stages: list[dict[str, str]] = field(default_factory=list)  # stage, produced, errors
    notes: list[str] = field(default_factory=list)  # under the metrics table
    provenance: dict[str, str] = field(default_factory=dict)
    sections: list = field(default_factory=list)  # report_annotations.Section, before provenance


# The summary's `images` value -> the label of its row in the metrics table.
ROW_LABELS = {"generated": "generated", "real": "real targets", "condition": "condition copied"}
TABLE_NOTE = (
    "mean ± std over images (n = images scored). Beside each checkpoint, its scale: "
    "real targets, the ceiling (SSIM, PSNR, LPIPS and FID by definition; IS, DS and, with "
    "reference keypoints, PCKh computed on the real images), and condition copied, the "
    "floor: the condition image scored as if it were the generated one."
)


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
) -> Report:
    """Collect the report's content from an evaluation directory (the pure core). `poses`:
    file id -> (x, y, image height, image width) of the keypoints the generator was given,
    drawn as the target pose in the grids."""
    from stages.report_figures import gallery, metrics_plot, pair_grid, ssim_histogram

    poses = poses or {}
    paths = EvaluationLayout(eval_dir)
    if not paths.summary.exists():
        raise DataError(f"{paths.summary} not found: run `evaluate --out {eval_dir}` first")
    summary = read_table(paths.summary, SUMMARY_SCHEMA)
    meta = json.loads(paths.meta.read_text()) if paths.meta.exists() else {}
    # evaluation.json keeps the generation folder relative to itself (or absolute).
    gen_root = Path(generated) if generated else Path(eval_dir) / meta.get("generated", "")
    report = Report(title=f"Pose-transfer evaluation: {name}")
    if meta.get("network_weights") == "random" or (summary["weights"] == "random").any():
        report.warnings.append(
            "Network metrics were computed with RANDOM weights (test/benchmark mode): "
            "IS, DS, LPIPS and FID values below are meaningless."
        )
    report.save_mode = report_save_mode(meta)
    if meta.get("save_mode") in (MIXED, UNKNOWN, None):
        report.warnings.append(f"Images scored: {report.save_mode}")
    report.skipped = dict(meta.get("skipped", {}))
    for r in summary[summary["status"] == "skipped"].itertuples():
        report.skipped.setdefault(r.metric, r.reason)
    report.table = metrics_table(summary)
    report.notes += scale_notes(summary) + symmetric_note(summary)
    generated = generated_only(summary)
    ckpts = sorted(generated["checkpoint"].unique(), key=checkpoint_sort_key)
    scored = [m for m in SPECS if m in set(generated.loc[generated["status"] == "ok", "metric"])]
    if scored:
        report.figures.append(
            (
                "metrics.png",
                "Each metric across checkpoints (band: ± std over images)",
                metrics_plot(generated, scored, ckpts),
            )
        )
    pairs = read_table(paths.pairs, PAIRS_INDEX_SCHEMA) if paths.pairs.exists() else None
    if pairs is not None and gen_root.is_dir():
        for direction, part in pairs.groupby("direction"):
            report.figures.append((
                f"gallery_{direction}.png",
                f"Gallery, {direction[0]}→{direction[1]}: the same test pairs generated by "
                f"every checkpoint ({', '.join(ckpts)})",
                gallery(gen_root, part, ckpts, poses, 2 * grid_pairs),
            ))  # fmt: skip
    if paths.per_image("ssim").exists():
        ssim = generated_only(read_table(paths.per_image("ssim"), PER_IMAGE_SCHEMA))
        report.figures.append(
            ("ssim_hist.png", "Per-image SSIM by checkpoint", ssim_histogram(ssim, ckpts))
        )
        last = ckpts[-1]
        for direction in ("AB", "BA"):
            for label, rows in grid_rows(ssim, pairs, last, direction, grid_pairs).items():
                if len(rows) and gen_root.is_dir():
                    caption = (
                        f"{label.capitalize()} by SSIM: checkpoint {last}, "
                        f"{direction[0]}→{direction[1]}"
                    )
                    report.figures.append(
                        (
                            f"grid_{last}_{direction}_{label}.png",
                            caption,
                            pair_grid(gen_root, rows, poses),
                        )  # fmt: skip
                    )
    else:
        report.warnings.append(
            "SSIM was not scored, so there are no SSIM histogram and image grids."
        )
    files = meta.get("checkpoint_files", {})
    report.provenance = {
        "generated images": str(gen_root.resolve()),
        "evaluation": str(Path(eval_dir).resolve()),
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
    return report


def report_save_mode(meta: dict) -> str:
    """The header line: which save mode made the scored images and whether their numbers
    compare with the published ones. Evaluations written before the record say unknown."""
    if "save_mode_text" in meta:
        return meta["save_mode_text"]
    return f"{UNKNOWN} save mode: {SAVE_MODES[UNKNOWN]}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;"
    "padding:0 16px;color:#222}"
    "table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f2f2f2}"
    ".warn{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;margin:8px 0}"
    "td.real{color:#555}figure{margin:16px 0}"
    "figcaption{font-size:13px;color:#444;margin-bottom:4px}"
    "img{max-width:100%;border:1px solid #ddd}.row{display:flex;gap:12px}"
    ".row figure{flex:1;margin:8px 0}code{background:#f4f4f4;padding:1px 3px}"
    ".small{font-size:12px;color:#555}"
)


def render_html(report: Report) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report.title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{e(report.title)}</h1>"
        f"<p><b>Images scored:</b> {e(report.save_mode)}</p>"
    ]
    out += [f"<div class='warn'>{e(w)}</div>" for w in report.warnings]
    out.append("<h2>Metrics per checkpoint and direction</h2>")
    table = report.table
    if table is not None and len(table):
        metrics = [c for c in table.columns if c not in ("checkpoint", "direction", "images")]
        out.append(
            "<table><tr><th>checkpoint</th><th>direction</th><th>images</th>"
            + "".join(f"<th>{e(m)}</th>" for m in metrics)
            + "</tr>"
        )
        for r in table.to_dict("records"):
            cls = " class='real'" if r["images"] != ROW_LABELS["generated"] else ""
            direction = f"{r['direction'][0]}→{r['direction'][1]}"
            out.append(
                f"<tr><td{cls}>{e(r['checkpoint'])}</td><td{cls}>{direction}</td><td{cls}>{e(r['images'])}</td>"
                + "".join(f"<td{cls}>{e(str(r[m]))}</td>" for m in metrics)
                + "</tr>"
            )
        out.append(f"</table><p class='small'>{e(TABLE_NOTE)}</p><ul class='small'>")
        out += [f"<li><b>{e(m)}</b>: {e(METRIC_NOTES[m])}</li>" for m in metrics]
        out.append("</ul>")
        out += [f"<p class='small'>{e(n)}</p>" for n in report.notes]
    else:
        out.append("<p>No metric was scored.</p>")
    if report.stages:
        out.append(
            "<h2>Pipeline stages</h2><table><tr><th>stage</th><th>produced</th>"
            "<th>error rows</th></tr>"
        )
        out += [
            f"<tr><td>{e(r['stage'])}</td><td>{e(r['produced'])}</td><td>{e(r['errors'])}</td></tr>"
            for r in report.stages
        ]
        out.append("</table>")
    if report.skipped:
        out.append("<h2>Skipped metrics</h2><table><tr><th>metric</th><th>reason</th></tr>")
        out += [f"<tr><td>{e(m)}</td><td>{e(r)}</td></tr>" for m, r in report.skipped.items()]
        out.append(
            "</table><p class='small'>Provide the files (see "
            "<code>run_pipeline.py weights status</code>) and rerun <code>evaluate</code>: "
            "scored images are kept, only the missing metrics run.</p>"
        )
    if report.figures:
        out.append("<h2>Figures</h2>")
    grids = [f for f in report.figures if f[0].startswith("grid_")]
    for fname, caption, png in report.figures:
        if fname.startswith("grid_"):
            continue
        out.append(
            f"<figure><figcaption>{e(caption)}</figcaption>"
            f"<img src='{_data_uri(png)}' alt='{e(caption)}'></figure>"
        )
    for i in range(0, len(grids), 3):  # best, median, worst of one direction side by side
        out.append("<div class='row'>")
        out += [
            f"<figure><figcaption>{e(c)}</figcaption>"
            f"<img src='{_data_uri(p)}' alt='{e(c)}'></figure>"
            for _, c, p in grids[i : i + 3]
        ]
        out.append("</div>")
    out += [s.html for s in report.sections]
    out.append("<h2>Provenance</h2><table>")
    out += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in report.provenance.items()]
    out.append("</table></body></html>")
    return "\n".join(out)


def render_markdown(report: Report, image_dir: str = "images") -> str:
    lines = [f"# {report.title}", "", f"**Images scored:** {report.save_mode}", ""]
    lines += [f"> **Warning:** {w}\n" for w in report.warnings]
    lines += ["## Metrics per checkpoint and direction", ""]
    table = report.table
    if table is not None and len(table):
        cols = list(table.columns)
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += [
            "| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)
        ]
        lines += ["", TABLE_NOTE, ""]
        lines += [f"- **{m}**: {METRIC_NOTES[m]}" for m in cols[3:]]
        lines += ["", *report.notes]
    else:
        lines.append("No metric was scored.")
    if report.stages:
        lines += [
            "",
            "## Pipeline stages",
            "",
            "| stage | produced | error rows |",
            "|---|---|---|",
        ]
        lines += [f"| {r['stage']} | {r['produced']} | {r['errors']} |" for r in report.stages]
    if report.skipped:
        lines += ["", "## Skipped metrics", "", "| metric | reason |", "|---|---|"]
        lines += [f"| {m} | {r.replace('|', '/')} |" for m, r in report.skipped.items()]
    if report.figures:
        lines += ["", "## Figures", ""]
        lines += [
            f"![{caption}]({image_dir}/{fname})\n\n*{caption}*\n"
            for fname, caption, _ in report.figures
        ]
    for section in report.sections:
        lines += ["", section.markdown]
    lines += ["", "## Provenance", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.provenance.items()]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: str | os.PathLike) -> dict[str, str]:
    """report.html (self-contained), report.md and its images/ folder, written atomically."""
    out = Path(out)
    for fname, _, png in report.figures + [(f, "", p) for s in report.sections for f, p in s.files]:
        write_bytes_atomic(out / "images" / fname, png)
    write_bytes_atomic(out / "report.html", render_html(report).encode())
    write_bytes_atomic(out / "report.md", render_markdown(report).encode())
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md")}


def target_poses(cfg: Config) -> dict:
    """file id -> (x, y, image height, image width) from the keypoints table, if any."""
    table = DatasetLayout.of(cfg.dataset).keypoints_table
    if not table.exists():
        return {}
    cols = ["file_id", "x", "y", "img_h", "img_w", "error"]
    kp = read_table(table).loc[:, cols]
    kp = kp[kp["error"].isna()]
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
    eval_dir = Path(evaluation or outputs.evaluation)
    out = Path(out or outputs.report(cfg.report.name))
    report = build_report(
        eval_dir, cfg.report.name, cfg.report.grid_pairs, generated, target_poses(cfg)
    )
    report.stages = stage_overview(cfg)
    report.figures += training_figures(cfg)
    from stages.report_annotations import annotations_section

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
