"""Keypoints stage: OpenPose-18 keypoints per image, estimated with openpifpaf on Ray or
imported from a legacy keypoints CSV; the keypoints table plus legacy CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.tables import DataError, file_id, read_keypoints_csv
from pipeline.skeleton import valid_mask

IMPORTED = "imported"


def keypoints_from_csv(csv_path, images: pd.DataFrame, estimator: str = IMPORTED) -> pd.DataFrame:
    """Import a legacy keypoints CSV for `images` (columns path, split). Every image must
    have a row; rows for images not listed are ignored."""
    legacy = read_keypoints_csv(csv_path).drop_duplicates("file_id", keep="last").set_index("file_id")
    fids = images["path"].map(file_id)
    missing = [p for p, f in zip(images["path"], fids, strict=True) if f not in legacy.index]
    if missing:
        raise DataError(f"{csv_path}: no keypoints for {len(missing)} listed image(s), e.g. {missing[0]}")
    rows = legacy.loc[fids.tolist()]
    x = [np.asarray(v, np.int32) for v in rows["x"]]
    y = [np.asarray(v, np.int32) for v in rows["y"]]
    return pd.DataFrame({
        "path": images["path"].tolist(), "file_id": fids.tolist(), "split": images["split"].tolist(),
        "img_h": rows["img_h"].to_numpy(np.int32), "img_w": rows["img_w"].to_numpy(np.int32),
        "x": x, "y": y,
        "score": [valid_mask(a, b).astype(np.float32) for a, b in zip(x, y, strict=True)],
        "n_valid": [int(valid_mask(a, b).sum()) for a, b in zip(x, y, strict=True)],
        "estimator": estimator, "error": None,
    }).sort_values("path", ignore_index=True)  # fmt: skip
