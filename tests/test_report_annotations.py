"""The report's annotations section: overlays, per-keypoint rates, images without a person."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.atomic_io import read_table, read_table_batches
from pipeline.core.config import load_config
from pipeline.core.layout import DatasetLayout
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.synthetic.tree import GROUND_TRUTH_CSV
from stages.keypoints import keypoints_output, write_keypoint_qa
from stages.report_annotations import annotations_section
from stages.report_render import Report, render_html, render_markdown, write_report


def test_annotations_section_shows_overlays_rates_and_images_without_a_person(
    annotated_root, tmp_path
):
    import io

    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    layout = DatasetLayout(root)
    table = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    # The "estimate": the ground truth with one image far off and one where nobody was found.
    table.at[0, "x"] = np.where(
        np.asarray(table.at[0, "x"]) >= 0, np.asarray(table.at[0, "x"]) // 2, -1
    )
    table.at[1, "x"], table.at[1, "y"], table.at[1, "n_valid"] = [-1] * 18, [-1] * 18, 0
    keypoints_output(layout).commit(table)
    write_keypoint_qa(table, str(root / GROUND_TRUTH_CSV), layout)
    cfg = load_config(
        overrides=[f"dataset.root={root}", f"keypoints.compare={root / GROUND_TRUTH_CSV}"]
    )

    section = annotations_section(cfg)
    names = [f for f, _ in section.files]
    assert names == ["annotations_sample.png", "annotations_worst.png"]
    worst = Image.open(io.BytesIO(dict(section.files)["annotations_worst.png"]))
    assert worst.width > 2 * 176  # estimated | reference side by side
    assert table.at[0, "path"].split("/")[-1] in section.html.split("Worst agreement")[1][:400]
    assert "Images without a person (1)" in section.html and table.at[1, "path"] in section.html
    assert re.search(r"PCKh 0\.\d{3} over \d+ images", section.html)  # below 1: two images are off

    report = Report(title="t", sections=[section])
    assert section.html in render_html(report) and "## Annotations" in render_markdown(report)
    out = write_report(report, tmp_path / "report")
    assert (tmp_path / "report" / "images" / "annotations_worst.png").is_file()
    assert "<h2>Annotations</h2>" in open(out["html"]).read()
    per_keypoint = section.html.split("<h3>Per keypoint</h3>")[1]
    assert per_keypoint.count("<tr>") == 1 + 18 and "<th>detection_rate</th>" in per_keypoint


def test_annotations_read_in_batches_are_those_read_whole(annotated_root, tmp_path, monkeypatch):
    """The section is gathered a batch of rows at a time (a million rows whole took
    gigabytes): batches of 5 rows, with error rows among them, give the same section as
    one batch, and its sample is spread over the readable rows."""
    import stages.report_annotations as section_module

    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    layout = DatasetLayout(root)
    table = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    table.loc[[0, 3, 4, 9], "error"] = "unreadable: test"
    table.at[5, "n_valid"] = 0
    keypoints_output(layout).commit(table)
    write_keypoint_qa(table, str(root / GROUND_TRUTH_CSV), layout)
    cfg = load_config(
        overrides=[f"dataset.root={root}", f"keypoints.compare={root / GROUND_TRUTH_CSV}"]
    )
    whole = annotations_section(cfg)
    monkeypatch.setattr(section_module, "BATCH_ROWS", 5)
    batched = annotations_section(cfg)
    assert batched.html == whole.html and batched.files == whole.files
    assert f"{len(table)} images, 4 error rows" in whole.html
    # Every step-th readable row, the step from their count, whatever the batches; in the
    # order batches come (a partitioned table's: part by part).
    in_batches = pd.concat(read_table_batches(layout.keypoints_table, KEYPOINTS_SCHEMA,
                                              ["path", "error"], 7))  # fmt: skip
    readable = in_batches[in_batches["error"].isna()]["path"].tolist()
    step = len(readable) // section_module.SAMPLE_IMAGES
    sample = section_module.read_annotations(cfg).sample
    drawn = [p for part in sample for p in part["path"]]
    assert drawn == readable[::step][: section_module.SAMPLE_IMAGES]
