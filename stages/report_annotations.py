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
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from pipeline.core.atomic_io import read_arrow_batches, read_arrow_table, read_table
from pipeline.core.config import Config, dataset_path
from pipeline.core.layout import DatasetLayout
from pipeline.core.legacy_csv import list_values, read_keypoints_csv
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


def keypoint_rates(detection_rate: np.ndarray, qa: pd.DataFrame | None) -> pd.DataFrame:
    """Per OpenPose-18 keypoint: the share of the readable images where it was found, and
    with a QA table the reference counts, PCKh and median pixel error."""
    rates = pd.DataFrame({"keypoint": list(OP18_NAMES), "detection_rate": detection_rate})
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
    """What the section summarises, gathered in one pass over the keypoints table, a
    batch at a time (a million rows as pandas arrays per row took gigabytes): counts, the
    rows it draws, the QA table and the reference keypoints by file id (None without a
    compared reference)."""

    root: str
    rows: int = 0  # of the keypoints table, error rows included
    ok: int = 0  # rows without an error
    estimators: set[str] = field(default_factory=set)
    valid_sum: int = 0  # keypoints found, over the readable rows
    found: np.ndarray = field(default_factory=lambda: np.zeros(N_KEYPOINTS, np.int64))
    nobody: int = 0  # readable images where the estimator found no person
    listed: list[str] = field(default_factory=list)  # the first of them, by path
    sample: list[pd.DataFrame] = field(default_factory=list)  # rows spread over the table
    worst: list[pd.DataFrame] = field(default_factory=list)  # rows agreeing worst (QA)
    qa: pd.DataFrame | None = None
    reference: pd.DataFrame | None = None

    @property
    def detection_rate(self) -> np.ndarray:
        """Per keypoint, the share of the readable images where it was found."""
        return self.found / self.ok if self.ok else np.full(N_KEYPOINTS, np.nan)

    def count(self, batch: pa.Table) -> pa.Table:
        """Add a batch of keypoints rows to the counts; its readable rows."""
        self.rows += len(batch)
        ok = batch.filter(pc.is_null(batch["error"]))
        self.ok += len(ok)
        self.estimators |= set(pc.unique(ok["estimator"]).drop_null().to_pylist())
        self.valid_sum += pc.sum(ok["n_valid"]).as_py() or 0
        self.found += (list_values(ok["x"]) >= 0).sum(axis=0)
        nobody = ok.filter(pc.equal(ok["n_valid"], 0))["path"]
        self.nobody += len(nobody)
        self.listed += nobody.slice(0, LISTED_WITHOUT_PERSON - len(self.listed)).to_pylist()
        return ok


# What the section reads of the keypoints table, and how many rows at a time.
KEYPOINT_COLUMNS = ["path", "file_id", "x", "y", "n_valid", "estimator", "error"]
BATCH_ROWS = 65_536


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
    rates = keypoint_rates(found.detection_rate, found.qa)
    listed = found.listed
    more = f" (and {found.nobody - len(listed)} more)" if found.nobody > len(listed) else ""
    content = SectionContent(summary, figures, rates, found.nobody, listed, more)
    return Section(
        "Annotations",
        section_html(content),
        section_markdown(content),
        [(fname, png) for fname, _, png in figures],
    )


def read_annotations(cfg: Config) -> Annotations | None:
    """The counts and drawn rows of the dataset's keypoints table, its QA table, and the
    reference CSV the QA compared with (keypoints.compare) when both are there."""
    from pipeline.pose.keypoint_qa import KEYPOINT_QA_SCHEMA

    root = cfg.dataset.root
    layout = DatasetLayout(root)
    if not layout.keypoints_table.exists():
        return None
    found = Annotations(root)
    if layout.keypoints_qa.exists():
        found.qa = read_table(layout.keypoints_qa, KEYPOINT_QA_SCHEMA)
    compare = dataset_path(cfg, cfg.keypoints.compare) if cfg.keypoints.compare else None
    if found.qa is not None and compare and compare.is_file():
        reference = read_keypoints_csv(compare).drop_duplicates("file_id", keep="last")
        found.reference = reference.set_index("file_id")
    worst = pa.array(worst_agreeing(found.qa)["path"] if found.qa is not None else [], pa.string())
    # The sample: every step-th readable row, the step from their count (the error
    # column alone, read first).
    readable = read_arrow_table(layout.keypoints_table, columns=["error"], ordered=False)[
        "error"
    ].null_count
    wanted = np.arange(0, readable, max(1, readable // SAMPLE_IMAGES))[:SAMPLE_IMAGES]
    seen = 0  # readable rows before the batch
    for batch in read_arrow_batches(
        layout.keypoints_table, KEYPOINTS_SCHEMA, KEYPOINT_COLUMNS, BATCH_ROWS
    ):
        ok = found.count(batch)
        here = wanted[(wanted >= seen) & (wanted < seen + len(ok))] - seen
        if len(here):
            found.sample.append(ok.take(here).to_pandas())
        found.worst.append(ok.filter(pc.is_in(ok["path"], value_set=worst)).to_pandas())
        seen += len(ok)
    return found


def worst_agreeing(qa: pd.DataFrame) -> pd.DataFrame:
    """The QA rows of the images that agree worst with the reference (lowest PCKh)."""
    counted = qa[qa["error"].isna()]
    return counted.sort_values(["pckh", "mean_error_px"], ascending=[True, False]).head(
        WORST_IMAGES
    )


def summary_lines(found: Annotations, compare: str | None) -> list[str]:
    """The images, error rows, estimator and people found; with a QA table, the PCKh and
    median pixel error against the reference (`compare`, the reference CSV)."""
    from pipeline.pose.keypoint_qa import overall_pckh

    qa = found.qa
    estimators = ", ".join(sorted(found.estimators)) or "none"
    mean = found.valid_sum / found.ok if found.ok else float("nan")
    summary = [
        f"{found.rows} images, {found.rows - found.ok} error rows; estimator: {estimators}; "
        f"{found.nobody} image(s) without a person; mean {mean:.1f} valid keypoints."
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
    qa, reference = found.qa, found.reference
    figures = [
        (
            "annotations_sample.png",
            "Sample: estimated keypoints (red)"
            + (" and reference (green)" if reference is not None else ""),
            overlay_grid(found.root, _rows(found.sample), reference),
        )
    ]
    if qa is not None:
        worst = worst_agreeing(qa)
        rows = _rows(found.worst)
        rows = rows.set_index("path").reindex(worst["path"]).dropna(subset=["file_id"])
        caption = "Worst agreement with the reference (lowest PCKh): " + ", ".join(
            # Identity folder and file: synthetic and DeepFashion names repeat across identities.
            f"{'/'.join(Path(p).parts[-2:])} {v:.2f}"
            for p, v in zip(worst["path"], worst["pckh"], strict=True)
        )
        figures.append(
            (
                "annotations_worst.png",
                caption,
                overlay_grid(found.root, rows.reset_index(), reference),
            )
        )
    return figures


def _rows(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=KEYPOINT_COLUMNS)


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
