"""Annotate a synthetic tree from its own ground truth, in process: the keypoints table
(imported), the npz pose maps and the pairs table, through the same cores the annotation
stages run. For tests and benchmarks that need an annotated tree without Ray."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.atomic_io import write_table
from pipeline.core.layout import SPLITS, DatasetLayout
from pipeline.core.legacy_csv import read_image_list
from pipeline.core.schemas import PAIRS_SCHEMA
from pipeline.pose.posemap import write_posemap
from pipeline.synthetic.tree import GROUND_TRUTH_CSV
from stages.keypoints import keypoints_from_csv, keypoints_output
from stages.pairs import make_pairs


def annotate_from_ground_truth(root: str | Path, min_valid: int = 8) -> Path:
    root = Path(root)
    layout = DatasetLayout(root)
    splits = {s: read_image_list(layout.image_list(s), root) for s in SPLITS}
    images = pd.DataFrame(
        [(p, s) for s, ps in splits.items() for p in ps], columns=["path", "split"]
    )
    kp = keypoints_from_csv(root / GROUND_TRUTH_CSV, images)
    keypoints_output(layout).commit(kp)
    for r in kp.itertuples():
        write_posemap(layout.posemap(r.split, r.file_id), r.x, r.y, r.img_h, r.img_w)
    pairs, _ = make_pairs(kp, splits, min_valid=min_valid)
    write_table(pairs, layout.pairs_table, PAIRS_SCHEMA)
    return root
