"""The report's pipeline overview: what every stage produced (annotations, training,
generation) and the error rows it counted, read from the files the stages wrote."""

from __future__ import annotations

import json

import pandas as pd

from pipeline.core import storage
from pipeline.core.atomic_io import read_table, table_rows
from pipeline.core.config import Config
from pipeline.core.layout import DatasetLayout, OutputLayout, TrainLayout


def _reasons(errors: pd.Series, limit: int = 5) -> str:
    """'3 (not a readable image: 2, empty file: 1)' from a column of error strings."""
    errors = errors.dropna()
    if errors.empty:
        return "0"
    top = errors.map(lambda e: str(e).split(":")[0][:60]).value_counts().head(limit)
    return f"{len(errors)} (" + ", ".join(f"{k}: {v}" for k, v in top.items()) + ")"


def stage_overview(cfg: Config) -> list[dict[str, str]]:
    """One row per stage whose outputs exist: stage, what it produced, error rows."""
    rows: list[dict[str, str]] = []
    layout = DatasetLayout(cfg.dataset.root)
    if layout.keypoints_table.exists():
        kp = read_table(layout.keypoints_table, columns=["split", "n_valid", "estimator", "error"])
        estimators = ", ".join(sorted(kp["estimator"].dropna().unique()))
        rows.append(
            {
                "stage": "keypoints",
                "produced": f"{len(kp)} images, mean {kp['n_valid'].mean():.1f} "
                f"valid keypoints ({estimators})",
                "errors": _reasons(kp["error"]),
            }
        )
    # The stage's index of the maps it wrote: no listing of a folder per image.
    if layout.posemap_index.is_file():
        maps = table_rows(layout.posemap_index)
        rows.append({"stage": "posemaps", "produced": f"{maps} pose maps", "errors": "0"})
    if layout.pairs_table.exists():
        # Counted in Arrow: millions of pairs as Python strings took hundreds of MB.
        counts = storage.read_table(layout.pairs_table, ["split"])["split"].value_counts()
        per = sorted((c["values"].as_py(), c["counts"].as_py()) for c in counts)
        total = sum(n for _, n in per)
        per_split = ", ".join(f"{s} {n}" for s, n in per)
        rows.append({"stage": "pairs", "produced": f"{total} pairs ({per_split})", "errors": "0"})
    train = TrainLayout(OutputLayout(cfg.output.root).train)
    log = train.log
    if log.exists():
        losses = read_table(log)
        last = losses.iloc[-1]
        meta_path = train.meta
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        note = (
            ""
            if meta.get("perceptual_used", True)
            else "; perceptual term skipped (no VGG19 weights)"
        )
        rows.append(
            {
                "stage": "train",
                "produced": f"{int(last['iteration'])} iterations, final L1 "
                f"{last['g_l1']:.4f}, G {last['g_total']:.3f}, D {last['d_total']:.3f}{note}",
                "errors": str(int(meta.get("skipped_pairs", 0) or 0)),
            }
        )
    manifest = OutputLayout(cfg.output.root).manifest
    if manifest.exists():
        m = read_table(manifest, columns=["checkpoint", "status", "error"])
        rows.append(
            {
                "stage": "generate",
                "produced": f"{int((m['status'] == 'ok').sum())} images from "
                f"{m['checkpoint'].nunique()} checkpoint(s)",
                "errors": _reasons(m["error"]),
            }
        )
    return rows


def training_figures(cfg: Config) -> list[tuple[str, str, bytes]]:
    """The loss curves and the last training sample grid, when training ran."""
    from stages.report_figures import cached_plot, loss_plot

    outputs = OutputLayout(cfg.output.root)
    train = TrainLayout(outputs.train)
    figures = []
    if train.log.exists():
        figures.append(
            (
                "train_losses.png",
                "Training losses per iteration",
                cached_plot(outputs.plot_cache, loss_plot, read_table(train.log)),
            )
        )
    samples = sorted(train.samples.glob("iter_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if samples:
        figures.append(
            (
                "train_sample.png",
                f"Training sample at {samples[-1].stem.replace('_', ' ')} "
                "(condition | target | generated)",
                samples[-1].read_bytes(),
            )
        )
    return figures


def training_check_section(cfg: Config):
    """Trained vs untrained NetG vs copying the condition on the test pairs (SSIM, L1), as
    the train stage scored them (run_meta.json `test_quality`); None when it did not."""
    import html

    from stages.report_annotations import Section

    meta_path = TrainLayout(OutputLayout(cfg.output.root).train).meta
    quality = json.loads(meta_path.read_text()).get("test_quality") if meta_path.exists() else None
    if not quality:
        return None
    columns = ("trained", "untrained", "copy_condition")
    heads = ("trained NetG", "untrained NetG (same init)", "copy the condition")
    rows = [
        ("SSIM (higher is better)", quality["ssim"], 3),
        ("L1 (lower is better)", quality["l1"], 4),
    ]
    caption = f"{quality['pairs']} test pairs, {quality['checkpoint']}: {quality['verdict']}."
    out = ["<h2>Did training work?</h2><table><tr><th></th>"]
    out += [f"<th>{h}</th>" for h in heads]
    out.append("</tr>")
    for name, values, digits in rows:
        out.append(
            f"<tr><th>{name}</th>"
            + "".join(f"<td>{values[c]:.{digits}f}</td>" for c in columns)
            + "</tr>"
        )
    out.append(f"</table><p class='small'>{html.escape(caption)}</p>")
    md = ["## Did training work?", "", "| | " + " | ".join(heads) + " |", "|---" * 4 + "|"]
    md += [
        f"| {name} | " + " | ".join(f"{values[c]:.{digits}f}" for c in columns) + " |"
        for name, values, digits in rows
    ]
    md += ["", caption, ""]
    return Section("Did training work?", "\n".join(out), "\n".join(md))
