"""OpenPose-18 keypoint layout, the COCO-17 (openpifpaf) mapping and limbs for drawing."""

from __future__ import annotations

import numpy as np

OP18_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
N_KEYPOINTS = len(OP18_NAMES)
NOSE, NECK = 0, 1
R_SHOULDER, L_SHOULDER = 2, 5
# Head keypoints used for the PCKh head box (DESIGN 5).
HEAD_IDS = (0, 1, 14, 15, 16, 17)

COCO17_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# OP18 index -> COCO17 index, by name; the neck has no COCO counterpart.
OP18_FROM_COCO17 = tuple(
    COCO17_NAMES.index(name) if name in COCO17_NAMES else -1 for name in OP18_NAMES
)

# Limbs (pairs of OP18 indices) as OpenPose draws them: used by the synthetic figures,
# training sample grids and report overlays.
LIMBS = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

MISSING = -1


def coco17_to_op18(
    coco_xy: np.ndarray, coco_score: np.ndarray, min_score: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map one person's COCO-17 keypoints to OpenPose-18.

    Args:
        coco_xy: (17, 2) float pixel coordinates.
        coco_score: (17,) confidences; a keypoint counts as present when score > min_score.
    Returns:
        x, y as int32 (18,) with -1 for missing, and float32 (18,) scores (0 for missing).
        The neck is the midpoint of the shoulders when both are present, scored with the
        smaller of the two shoulder scores.
    """
    coco_xy = np.asarray(coco_xy, dtype=np.float64)
    coco_score = np.asarray(coco_score, dtype=np.float64)
    x = np.full(N_KEYPOINTS, MISSING, np.int32)
    y = np.full(N_KEYPOINTS, MISSING, np.int32)
    score = np.zeros(N_KEYPOINTS, np.float32)
    present = coco_score > min_score
    for op_idx, coco_idx in enumerate(OP18_FROM_COCO17):
        if coco_idx >= 0 and present[coco_idx]:
            x[op_idx] = int(round(coco_xy[coco_idx, 0]))
            y[op_idx] = int(round(coco_xy[coco_idx, 1]))
            score[op_idx] = coco_score[coco_idx]
    ls, rs = COCO17_NAMES.index("left_shoulder"), COCO17_NAMES.index("right_shoulder")
    if present[ls] and present[rs]:
        mid = (coco_xy[ls] + coco_xy[rs]) / 2.0
        x[NECK], y[NECK] = int(round(mid[0])), int(round(mid[1]))
        score[NECK] = min(coco_score[ls], coco_score[rs])
    return x, y, score


def valid_mask(
    x: np.ndarray, y: np.ndarray, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Keypoints that are present (not -1) and, when a size is given, inside the image."""
    x, y = np.asarray(x), np.asarray(y)
    ok = (x != MISSING) & (y != MISSING) & (x >= 0) & (y >= 0)
    if height is not None and width is not None:
        ok &= (x < width) & (y < height)
    return ok


# What an estimator returns per image: x int32 (18,), y int32 (18,), score float32 (18,).
Keypoints = tuple[np.ndarray, np.ndarray, np.ndarray]
