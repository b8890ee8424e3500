"""The report's annotations section: skeleton overlays (estimated, and the reference where
the keypoints stage compared them) for a sample and for the worst-agreeing images, the
per-keypoint detection rate and QA scores, and the images where nobody was found."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.core.atomic_io import read_table
from pipeline.core.config import Config, dataset_path
from pipeline.core.layout import DatasetLayout
from pipeline.core.legacy_csv import read_keypoints_csv
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.pose.skeleton import N_KEYPOINTS, OP18_NAMES
from stages.report_render import figure_html

ESTIMATED_COLOUR = (230, 30, 30)
REFERENCE_COLOUR = (20, 160, 60)
SAMPLE_IMAGES = 8
WORST_IMAGES = 8
LISTED_WITHOUT_PERSON = 20


@dataclass
class Section:
    """A report section rendered both ways, with the PNGs its Markdown links to."""

    title: str
    html: str
    markdown: str
    files: list[tuple[str, bytes]] = field(default_factory=list)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def overlay_panel(image: Image.Image, x, y, colour, label: str) -> Image.Image:
    """The image with one skeleton drawn over it and a label in the top-left corner."""
    from pipeline.pose.drawing import draw_skeleton

    out = draw_skeleton(image, np.asarray(x), np.asarray(y), colour)
    ImageDraw.Draw(out).text((3, 2), label, fill=colour)
    return out


def overlay_grid(
    root: str, rows: pd.DataFrame, reference: pd.DataFrame | None, per_row: int = 4
) -> bytes:
    """Estimated (red) and, where there is a reference, reference (green) overlays side by
    side for each image of `rows` (keypoints table rows)."""
    from pipeline.core.imaging import ImageError, read_rgb
    from pipeline.pose.drawing import grid

    cells: list[Image.Image] = []
    for r in rows.itertuples(index=False):
        try:
            image = read_rgb(root, r.path)
        except ImageError:
            continue  # listed in the keypoints table's error rows already
        cells.append(overlay_panel(image, r.x, r.y, ESTIMATED_COLOUR, "estimated"))
        if reference is not None and r.file_id in reference.index:
            ref = reference.loc[r.file_id]
            cells.append(overlay_panel(image, ref["x"], ref["y"], REFERENCE_COLOUR, "reference"))
    if not cells:
        return b""
    width = per_row * (2 if reference is not None else 1)
    return _png(grid([cells[i : i + width] for i in range(0, len(cells), width)]))


def keypoint_rates(keypoints: pd.DataFrame, qa: pd.DataFrame | None) -> pd.DataFrame:
    """Per OpenPose-18 keypoint: the share of (readable) images where it was found, and
    with a QA table the reference counts, PCKh and median pixel error."""
    ok = keypoints[keypoints["error"].isna()]
    found = (
        np.stack([np.asarray(x) >= 0 for x in ok["x"]]) if len(ok) else np.zeros((0, N_KEYPOINTS))
    )
    rates = pd.DataFrame(
        {"keypoint": list(OP18_NAMES), "detection_rate": found.mean(0) if len(ok) else np.nan}
    )
    if qa is not None:
        from pipeline.pose.keypoint_qa import per_keypoint

        scored = per_keypoint(qa)[["reference", "pckh", "median_error_px"]]
        rates = pd.concat([rates, scored], axis=1)
    return rates


def _table_html(frame: pd.DataFrame) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _table_markdown(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return lines + [
        "| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{value:.3g}"
    return str(value)


@dataclass
class Annotations:
    """What the section summarises: the keypoints table, its readable rows, the QA table
    and the reference keypoints by file id (None without a compared reference)."""

    root: str
    keypoints: pd.DataFrame
    ok: pd.DataFrame  # the rows without an error
    qa: pd.DataFrame | None
    reference: pd.DataFrame | None

    @property
    def nobody(self) -> pd.DataFrame:
        """Readable images where the estimator found no person."""
        return self.ok[self.ok["n_valid"] == 0]


@dataclass
class SectionContent:
    """The section's parts, rendered once as HTML and once as Markdown."""

    summary: list[str]
    figures: list[tuple[str, str, bytes]]  # (file name, caption, png)
    rates: pd.DataFrame  # per keypoint
    nobody: int  # images without a person
    listed: list[str]  # the first of them, by path
    more: str  # " (and N more)" when not all are listed


def annotations_section(cfg: Config) -> Section | None:
    """The section for the keypoints table of `cfg`'s dataset (None when there is none)."""
    found = read_annotations(cfg)
    if found is None:
        return None
    summary = summary_lines(found, cfg.keypoints.compare)
    figures = [f for f in overlay_figures(found) if f[2]]
    rates = keypoint_rates(found.keypoints, found.qa)
    nobody = found.nobody
    listed = nobody["path"].head(LISTED_WITHOUT_PERSON).tolist()
    more = f" (and {len(nobody) - len(listed)} more)" if len(nobody) > len(listed) else ""
    content = SectionContent(summary, figures, rates, len(nobody), listed, more)
    return Section(
        "Annotations",
        section_html(content),
        section_markdown(content),
        [(fname, png) for fname, _, png in figures],
    )


def read_annotations(cfg: Config) -> Annotations | None:
    """The dataset's keypoints and QA tables, and the reference CSV the QA compared with
    (keypoints.compare) when both are there."""
    from pipeline.pose.keypoint_qa import KEYPOINT_QA_SCHEMA

    root = cfg.dataset.root
    layout = DatasetLayout(root)
    if not layout.keypoints_table.exists():
        return None
    keypoints = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    qa = (
        read_table(layout.keypoints_qa, KEYPOINT_QA_SCHEMA)
        if layout.keypoints_qa.exists()
        else None
    )
    reference = None
    compare = dataset_path(cfg, cfg.keypoints.compare) if cfg.keypoints.compare else None
    if qa is not None and compare and compare.is_file():
        reference = read_keypoints_csv(compare).drop_duplicates("file_id", keep="last")
        reference = reference.set_index("file_id")
    ok = keypoints[keypoints["error"].isna()]
    return Annotations(root, keypoints, ok, qa, reference)


def summary_lines(found: Annotations, compare: str | None) -> list[str]:
    """The images, error rows, estimator and people found; with a QA table, the PCKh and
    median pixel error against the reference (`compare`, the reference CSV)."""
    from pipeline.pose.keypoint_qa import overall_pckh

    keypoints, ok, qa = found.keypoints, found.ok, found.qa
    estimators = ", ".join(sorted(ok["estimator"].dropna().unique())) or "none"
    summary = [
        f"{len(keypoints)} images, {len(keypoints) - len(ok)} error rows; estimator: {estimators}; "
        f"{len(found.nobody)} image(s) without a person; mean {ok['n_valid'].mean():.1f} valid "
        "keypoints."
    ]
    if qa is not None:
        counted = qa[qa["error"].isna()]
        errors = (
            np.concatenate([np.asarray(v, np.float32) for v in counted["error_px"]])
            if len(counted)
            else []
        )
        errors = np.asarray(errors)[np.isfinite(errors)]
        source = Path(compare).name if compare else "the reference CSV"
        summary.append(
            f"Against {source}: PCKh {overall_pckh(qa):.3f} over {len(counted)} images "
            f"({len(qa) - len(counted)} not counted), median pixel error "
            f"{np.median(errors) if errors.size else float('nan'):.1f}."
        )
    return summary


def overlay_figures(found: Annotations) -> list[tuple[str, str, bytes]]:
    """(file name, caption, png): a sample spread over the table and, with a QA table, the
    images that agree worst with the reference; a grid with no readable image is empty."""
    ok, qa, reference = found.ok, found.qa, found.reference
    step = max(1, len(ok) // SAMPLE_IMAGES)
    sample = ok.iloc[::step].head(SAMPLE_IMAGES)
    figures = [
        (
            "annotations_sample.png",
            "Sample: estimated keypoints (red)"
            + (" and reference (green)" if reference is not None else ""),
            overlay_grid(found.root, sample, reference),
        )
    ]
    if qa is not None:
        worst = qa[qa["error"].isna()].sort_values(
            ["pckh", "mean_error_px"], ascending=[True, False]
        )
        worst = worst.head(WORST_IMAGES)
        rows = ok.set_index("path").loc[worst["path"]].reset_index()
        caption = "Worst agreement with the reference (lowest PCKh): " + ", ".join(
            # Identity folder and file: synthetic and DeepFashion names repeat across identities.
            f"{'/'.join(Path(p).parts[-2:])} {v:.2f}"
            for p, v in zip(worst["path"], worst["pckh"], strict=True)
        )
        figures.append(
            ("annotations_worst.png", caption, overlay_grid(found.root, rows, reference))
        )
    return figures


def section_html(c: SectionContent) -> str:
    e = html.escape
    parts = ["<h2>Annotations</h2>", *(f"<p>{e(s)}</p>" for s in c.summary)]
    parts += [figure_html(caption, png, fname) for fname, caption, png in c.figures]
    parts += [
        "<h3>Per keypoint</h3>",
        _table_html(c.rates),
        "<p class='small'>detection_rate: share of readable images where the estimator found "
        "the keypoint; reference, pckh, median_error_px: against the reference CSV (DESIGN 5 "
        "PCKh, head box from the reference).</p>",
        f"<h3>Images without a person ({c.nobody})</h3>",
    ]
    parts.append(
        "<ul class='small'>" + "".join(f"<li>{e(p)}</li>" for p in c.listed) + f"</ul>{e(c.more)}"
        if c.listed
        else "<p>None.</p>"
    )
    return "\n".join(parts)


def section_markdown(c: SectionContent) -> str:
    md = ["## Annotations", "", *c.summary, ""]
    md += [f"![{caption}](images/{fname})\n\n*{caption}*\n" for fname, caption, _ in c.figures]
    md += [
        "### Per keypoint",
        "",
        *_table_markdown(c.rates),
        "",
        f"### Images without a person ({c.nobody})",
        "",
    ]
    md += (
        [f"- {p}" for p in c.listed]
        + ([c.more.strip()] if c.more else [])
        + ([] if c.listed else ["None."])
    )
    return "\n".join(md)
