"""The shared annotated tree other stages' tests start from is what the contracts say."""

import numpy as np

from pipeline.core.atomic_io import read_table
from pipeline.core.layout import DatasetLayout
from pipeline.core.schemas import KEYPOINTS_SCHEMA, PAIRS_SCHEMA
from pipeline.pose.posemap import load_posemap


def test_annotated_tree_contracts(annotated_root):
    layout = DatasetLayout(annotated_root)
    kp = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    pairs = read_table(layout.pairs_table, PAIRS_SCHEMA)
    assert len(kp) == 32 and kp.error.isna().all()
    # 4 poses per identity, all eligible: 4 * 3 ordered pairs per identity.
    assert len(pairs) == 8 * 12 and set(pairs.split) == {"train", "test"}
    r = kp.iloc[0]
    m = load_posemap(layout.posemap(r.split, r.file_id))
    assert m.shape == (256, 176, 18) and m.dtype == np.uint8
    ys, xs, ks = np.nonzero(m)
    for k in range(18):
        if r.x[k] >= 0:
            assert (xs[ks == k], ys[ks == k]) == ([r.x[k]], [r.y[k]])
    assert m.sum() == r.n_valid
