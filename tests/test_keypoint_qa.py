"""Annotation QA against a reference CSV: a hand-computed PCKh and pixel-error case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.atomic_io import read_table, write_table
from pipeline.core.legacy_csv import read_keypoints_csv, write_keypoints_csv
from pipeline.metrics.pckh import pckh_counts
from pipeline.pose.keypoint_qa import (
    KEYPOINT_QA_SCHEMA,
    compare_keypoints,
    overall_pckh,
    per_keypoint,
    targets_pckh,
)
from pipeline.pose.skeleton import OP18_NAMES

OP = {name: i for i, name in enumerate(OP18_NAMES)}


def pose(**points) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.full(18, -1, np.int32), np.full(18, -1, np.int32)
    for k, (px, py) in points.items():
        x[OP[k]], y[OP[k]] = px, py
    return x, y


def rows(poses: dict[str, tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "path": f"img/{fid}.jpg",
                "file_id": fid,
                "split": "test",
                "img_h": 256,
                "img_w": 176,
                "x": x,
                "y": y,
                "score": (x >= 0).astype(np.float32),
                "n_valid": int((x >= 0).sum()),
                "estimator": "test",
                "error": None,
            }
            for fid, (x, y) in poses.items()
        ]
    )


def test_qa_scores_a_hand_computed_case(tmp_path):
    # Reference head box: x 45..55, y 15..40 -> correct when |dx| < 5 and |dy| < 12.5.
    ref = pose(
        nose=(50, 20),
        neck=(50, 40),
        right_eye=(45, 15),
        left_eye=(55, 15),
        right_shoulder=(30, 50),
        left_shoulder=(70, 50),
    )
    est = pose(
        nose=(50, 20),  # exact: correct
        neck=(54, 40),  # dx 4 < 5: correct
        right_shoulder=(36, 50),  # dx 6: wrong
        right_eye=(45, 28),  # dy 13: wrong
        left_eye=(55, 27),  # dy 12 < 12.5: correct
        right_hip=(40, 100),
    )  # not in the reference: ignored; left_shoulder not found
    reference = rows({"a": ref, "b": pose(nose=(10, 10), right_hip=(20, 90))})
    estimated = rows({"a": est, "b": pose(nose=(10, 10)), "c": est})
    estimated.loc[3] = {
        **estimated.iloc[0].to_dict(),
        "path": "img/bad.jpg",
        "file_id": "bad",
        "error": "empty file (0 bytes)",
    }
    csv = tmp_path / "reference.csv"
    write_keypoints_csv(reference, csv)
    qa = compare_keypoints(estimated, read_keypoints_csv(csv))
    write_table(qa, tmp_path / "qa.parquet", KEYPOINT_QA_SCHEMA)
    qa = read_table(tmp_path / "qa.parquet", KEYPOINT_QA_SCHEMA).set_index("file_id")

    assert list(qa.index) == ["a", "b", "c"]  # error rows stay out
    a = qa.loc["a"]
    assert (a["n_correct"], a["n_ref_valid"], a["pckh"]) == (3, 6, 0.5)
    assert (a["n_correct"], a["n_ref_valid"]) == pckh_counts(*ref, *est)  # DESIGN 5, as evaluate
    assert (a["head_w"], a["head_h"]) == (10, 25)
    assert a["mean_error_px"] == pytest.approx((0 + 4 + 6 + 13 + 12) / 5)
    err = np.asarray(a["error_px"])
    assert (
        err[OP["right_shoulder"]] == 6
        and np.isnan(err[OP["left_shoulder"]])
        and np.isnan(err[OP["right_hip"]])
    )
    assert [OP18_NAMES[k] for k in np.flatnonzero(a["correct"])] == ["nose", "neck", "left_eye"]
    assert "fewer than 2 head keypoints" in qa.loc["b", "error"] and pd.isna(qa.loc["b", "pckh"])
    assert qa.loc["c", "error"] == "no reference keypoints for this image"
    assert overall_pckh(qa.reset_index()) == 0.5
    # The real targets' PCKh in the evaluation: each target as often as a pair lists it;
    # targets the QA does not count (b: no head box; x: not in the table) are not counted.
    assert targets_pckh(qa.reset_index(), ["a", "a", "b", "x"]) == (0.5, 2, 2)

    kp = per_keypoint(qa.reset_index()).set_index("keypoint")
    assert kp.loc["nose", ["reference", "detected", "correct", "pckh"]].tolist() == [1, 1, 1, 1.0]
    assert kp.loc["left_shoulder", ["reference", "detected", "pckh"]].tolist() == [1, 0, 0.0]
    assert kp.loc["right_eye", "median_error_px"] == 13 and np.isnan(kp.loc["right_hip", "pckh"])
