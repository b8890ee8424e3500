"""PCKh (DESIGN 5): keypoints re-estimated on a generated image against the real
image's, within half the head box."""

from __future__ import annotations

import numpy as np

from pipeline.pose.skeleton import HEAD_IDS as HEAD_KEYPOINTS  # nose, neck, eyes, ears

MIN_HEAD_KEYPOINTS = 2
THRESHOLD = 0.5


def head_size(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Width and height of the bounding box of the valid head keypoints of one image;
    None when fewer than 2 are valid (the image is not counted)."""
    hx, hy = np.asarray(x)[list(HEAD_KEYPOINTS)], np.asarray(y)[list(HEAD_KEYPOINTS)]
    ok = (hx >= 0) & (hy >= 0)
    if ok.sum() < MIN_HEAD_KEYPOINTS:
        return None
    return float(hx[ok].max() - hx[ok].min()), float(hy[ok].max() - hy[ok].min())


def pckh_counts(real_x, real_y, fake_x, fake_y) -> tuple[int, int] | None:
    """(correct, valid) for one image, or None when its head box is undefined.

    valid = keypoints valid in the real image; a keypoint is correct when valid in both and
    |dx| < 0.5 head_w and |dy| < 0.5 head_h (head box from the real keypoints)."""
    size = head_size(real_x, real_y)
    if size is None:
        return None
    rx, ry, fx, fy = (np.asarray(a, np.int64) for a in (real_x, real_y, fake_x, fake_y))
    real_ok = (rx >= 0) & (ry >= 0)
    both = real_ok & (fx >= 0) & (fy >= 0)
    close = (np.abs(rx - fx) < THRESHOLD * size[0]) & (np.abs(ry - fy) < THRESHOLD * size[1])
    return int((both & close).sum()), int(real_ok.sum())


def pckh_score(correct: np.ndarray, valid: np.ndarray) -> float:
    """Total correct / total valid real keypoints over the counted images (NaN if none)."""
    total = int(np.sum(valid))
    return float(np.sum(correct)) / total if total else float("nan")


def pckh_rows(real_kp: list, fake_kp: list) -> list[dict]:
    """Per-image PCKh counts from estimated keypoints; an image whose real keypoints have
    fewer than 2 head points is not counted and says so."""
    out = []
    for (rx, ry, _), (fx, fy, _) in zip(real_kp, fake_kp, strict=True):
        counts = pckh_counts(rx, ry, fx, fy)
        if counts is None:
            out.append(
                {
                    "error": f"not counted: fewer than {MIN_HEAD_KEYPOINTS} head keypoints "
                    "in the real image"
                }
            )
        else:
            out.append(
                {"correct": counts[0], "valid": counts[1], "value": counts[0] / max(counts[1], 1)}
            )
    return out
