"""Annotation QA: estimated keypoints scored against a reference legacy keypoints CSV (the
synthetic ground truth, or the published OpenPose CSV): PCKh as DESIGN 5 defines it (head
box from the reference) and pixel error, per image and per keypoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.metrics.pckh import MIN_HEAD_KEYPOINTS, THRESHOLD, head_size
from pipeline.pose.skeleton import N_KEYPOINTS, OP18_NAMES, valid_mask

KEYPOINT_QA_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("file_id", pa.string()),
        ("split", pa.string()),
        ("ref_valid", pa.list_(pa.bool_(), N_KEYPOINTS)),  # valid in the reference
        ("est_valid", pa.list_(pa.bool_(), N_KEYPOINTS)),  # valid in the estimate
        ("correct", pa.list_(pa.bool_(), N_KEYPOINTS)),  # within half the reference head box
        (
            "error_px",
            pa.list_(pa.float32(), N_KEYPOINTS),
        ),  # euclidean distance; NaN unless both valid
        ("head_w", pa.float32()),  # reference head box (null when undefined)
        ("head_h", pa.float32()),
        ("n_correct", pa.int32()),
        ("n_ref_valid", pa.int32()),
        ("pckh", pa.float64()),  # n_correct / n_ref_valid; null when not counted
        ("mean_error_px", pa.float64()),  # over keypoints valid in both; null when none
        ("error", pa.string()),  # why the image is not counted (null when counted)
    ]
)


def compare_image(est_x, est_y, ref_x, ref_y) -> dict:
    """QA of one image: per-keypoint validity, correctness and pixel error, and the
    image's PCKh counts. `error` is set when the reference head box is undefined."""
    ex, ey, rx, ry = (np.asarray(a, np.int64) for a in (est_x, est_y, ref_x, ref_y))
    ref_ok, est_ok = valid_mask(rx, ry), valid_mask(ex, ey)
    both = ref_ok & est_ok
    dist = np.where(both, np.hypot(ex - rx, ey - ry), np.nan).astype(np.float32)
    size = head_size(rx, ry)
    row = {
        "ref_valid": ref_ok,
        "est_valid": est_ok,
        "error_px": dist,
        "mean_error_px": float(np.nanmean(dist)) if both.any() else None,
    }
    if size is None:
        return {
            **row,
            "correct": np.zeros(N_KEYPOINTS, bool),
            "head_w": None,
            "head_h": None,
            "n_correct": 0,
            "n_ref_valid": int(ref_ok.sum()),
            "pckh": None,
            "error": f"not counted: fewer than {MIN_HEAD_KEYPOINTS} head keypoints in reference",
        }
    correct = (
        both & (np.abs(ex - rx) < THRESHOLD * size[0]) & (np.abs(ey - ry) < THRESHOLD * size[1])
    )
    n_ref = int(ref_ok.sum())
    return {
        **row,
        "correct": correct,
        "head_w": size[0],
        "head_h": size[1],
        "n_correct": int(correct.sum()),
        "n_ref_valid": n_ref,
        "pckh": float(correct.sum()) / n_ref,
        "error": None,
    }


def compare_keypoints(estimated: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """One QA row per estimated image (keypoints table rows; rows with an `error` stay out).

    `reference`: read_keypoints_csv's frame (file_id, img_h, img_w, x, y). Images without a
    reference row, or whose reference was made on an image of another size, are kept with
    the reason in `error` and not counted."""
    ref = reference.drop_duplicates("file_id", keep="last").set_index("file_id")
    blank = np.full(N_KEYPOINTS, -1, np.int32)
    rows = []
    for r in estimated[estimated["error"].isna()].itertuples(index=False):
        base = {"path": r.path, "file_id": r.file_id, "split": r.split}
        if r.file_id not in ref.index:
            reason = "no reference keypoints for this image"
        elif (ref.at[r.file_id, "img_h"], ref.at[r.file_id, "img_w"]) != (r.img_h, r.img_w):
            reason = (
                f"reference is for a {ref.at[r.file_id, 'img_w']}x{ref.at[r.file_id, 'img_h']} "
                f"image, this one is {r.img_w}x{r.img_h}"
            )
        else:
            rows.append(
                {**base, **compare_image(r.x, r.y, ref.at[r.file_id, "x"], ref.at[r.file_id, "y"])}
            )
            continue
        rows.append(
            {**base, **compare_image(r.x, r.y, blank, blank), "n_ref_valid": 0, "error": reason}
        )
    return pd.DataFrame(rows, columns=KEYPOINT_QA_SCHEMA.names)


def counted(qa: pd.DataFrame) -> pd.DataFrame:
    return qa[qa["error"].isna()]


def overall_pckh(qa: pd.DataFrame) -> float:
    """Correct / valid reference keypoints pooled over the counted images (NaN if none)."""
    ok = counted(qa)
    total = int(ok["n_ref_valid"].sum())
    return float(ok["n_correct"].sum()) / total if total else float("nan")


def targets_pckh(qa: pd.DataFrame, file_ids: list[str]) -> tuple[float, int, int]:
    """The estimator's PCKh against the reference over these images, each counted as often
    as it is listed (once per test pair, like the generated images): (score, counted, not
    counted)."""
    ok = counted(qa).drop_duplicates("file_id")[["file_id", "n_correct", "n_ref_valid"]]
    hit = pd.DataFrame({"file_id": file_ids}).merge(ok, on="file_id", how="left").dropna()
    total = int(hit["n_ref_valid"].sum())
    score = float(hit["n_correct"].sum()) / total if total else float("nan")
    return score, len(hit), len(file_ids) - len(hit)


def per_keypoint(qa: pd.DataFrame) -> pd.DataFrame:
    """One row per OpenPose-18 keypoint over the counted images: how often the reference
    has it, how often the estimator found it there (detected), PCKh and the median pixel
    error where both have it."""
    ok = counted(qa)
    if ok.empty:
        ref = est = correct = np.zeros((0, N_KEYPOINTS), bool)
        err = np.zeros((0, N_KEYPOINTS), np.float32)
    else:
        ref, est, correct = (
            np.stack(ok[c].map(np.asarray).to_list()) for c in ("ref_valid", "est_valid", "correct")
        )
        err = np.stack(ok["error_px"].map(lambda v: np.asarray(v, np.float32)).to_list())
    n_ref = ref.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        median = [
            float(np.nanmedian(err[:, k])) if np.isfinite(err[:, k]).any() else np.nan
            for k in range(N_KEYPOINTS)
        ]
        return pd.DataFrame(
            {
                "keypoint": list(OP18_NAMES),
                "reference": n_ref,
                "detected": (ref & est).sum(0),
                "correct": correct.sum(0),
                "detection_rate": (ref & est).sum(0) / n_ref,
                "pckh": correct.sum(0) / n_ref,
                "median_error_px": median,
            }
        )


def qa_summary(qa: pd.DataFrame, reference_name: str) -> list[str]:
    """Lines for the stage output: overall PCKh and pixel error, the weakest keypoints."""
    ok = counted(qa)
    errors = (
        np.concatenate([np.asarray(v, np.float32) for v in ok["error_px"]])
        if len(ok)
        else np.zeros(0)
    )
    errors = errors[np.isfinite(errors)]
    lines = [
        f"QA against {reference_name}: PCKh {overall_pckh(qa):.3f} over {len(ok)} image(s) "
        f"({len(qa) - len(ok)} not counted); pixel error median "
        f"{np.median(errors) if errors.size else float('nan'):.1f}, mean "
        f"{errors.mean() if errors.size else float('nan'):.1f}"
    ]
    kp = per_keypoint(qa).dropna(subset=["pckh"]).sort_values("pckh")
    if len(kp):
        lines.append(
            "  weakest keypoints (PCKh): "
            + ", ".join(f"{r.keypoint} {r.pckh:.2f}" for r in kp.head(4).itertuples())
        )
    return lines
