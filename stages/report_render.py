"""The report's content (Report) rendered twice: a self-contained HTML page (images embedded,
opens offline) and a Markdown twin whose images sit in images/ beside it; stages/report.py
collects the content."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field

import pandas as pd

from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.object_path import data_path
from pipeline.metrics.registry import SPECS


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


def figure_html(caption: str, png: bytes, alt: str) -> str:
    """A captioned figure with its PNG embedded (the page opens offline)."""
    e = html.escape
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    return f"<figure><figcaption>{e(caption)}</figcaption><img src='{uri}' alt='{e(alt)}'></figure>"


def render_html(report: Report) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report.title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{e(report.title)}</h1>"
        f"<p><b>Images scored:</b> {e(report.save_mode)}</p>"
    ]
    out += [f"<div class='warn'>{e(w)}</div>" for w in report.warnings]
    out += _metrics_html(report)
    out += _stages_html(report.stages)
    out += _skipped_html(report.skipped)
    out += _figures_html(report.figures)
    out += [s.html for s in report.sections]
    out.append("<h2>Provenance</h2><table>")
    out += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in report.provenance.items()]
    out.append("</table></body></html>")
    return "\n".join(out)


def _metrics_html(report: Report) -> list[str]:
    """The metrics table (the real-target and condition rows greyed), its notes."""
    e = html.escape
    out = ["<h2>Metrics per checkpoint and direction</h2>"]
    table = report.table
    if table is None or not len(table):
        return [*out, "<p>No metric was scored.</p>"]
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
    out += [f"<li><b>{e(m)}</b>: {e(SPECS[m].note)}</li>" for m in metrics]
    out.append("</ul>")
    return out + [f"<p class='small'>{e(n)}</p>" for n in report.notes]


def _stages_html(stages: list[dict[str, str]]) -> list[str]:
    e = html.escape
    if not stages:
        return []
    return [
        "<h2>Pipeline stages</h2><table><tr><th>stage</th><th>produced</th>"
        "<th>error rows</th></tr>",
        *(
            f"<tr><td>{e(r['stage'])}</td><td>{e(r['produced'])}</td><td>{e(r['errors'])}</td></tr>"
            for r in stages
        ),
        "</table>",
    ]


def _skipped_html(skipped: dict[str, str]) -> list[str]:
    e = html.escape
    if not skipped:
        return []
    return [
        "<h2>Skipped metrics</h2><table><tr><th>metric</th><th>reason</th></tr>",
        *(f"<tr><td>{e(m)}</td><td>{e(r)}</td></tr>" for m, r in skipped.items()),
        "</table><p class='small'>Provide the files (see "
        "<code>run_pipeline.py weights status</code>) and rerun <code>evaluate</code>: "
        "scored images are kept, only the missing metrics run.</p>",
    ]


def _figures_html(figures: list[tuple[str, str, bytes]]) -> list[str]:
    """The figures, then the image grids three to a row (best, median and worst of one
    direction side by side)."""
    out = ["<h2>Figures</h2>"] if figures else []
    grids = [f for f in figures if f[0].startswith("grid_")]
    out += [figure_html(caption, png, caption) for fname, caption, png in figures
            if not fname.startswith("grid_")]  # fmt: skip
    for i in range(0, len(grids), 3):
        out.append("<div class='row'>")
        out += [figure_html(c, p, c) for _, c, p in grids[i : i + 3]]
        out.append("</div>")
    return out


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
        lines += [f"- **{m}**: {SPECS[m].note}" for m in cols[3:]]
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
    out = data_path(out)
    for fname, _, png in report.figures + [(f, "", p) for s in report.sections for f, p in s.files]:
        write_bytes_atomic(out / "images" / fname, png)
    write_bytes_atomic(out / "report.html", render_html(report).encode())
    write_bytes_atomic(out / "report.md", render_markdown(report).encode())
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md")}
