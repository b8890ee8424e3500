"""Pose maps from keypoints: the published one-hot `uint8 H x W x 18` array, or a
gaussian variant. Shared by the posemaps stage and on-the-fly rendering."""

from __future__ import annotations

import numpy as np

from pipeline.skeleton import N_KEYPOINTS, valid_mask


def one_hot_map(x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
    """1 at [y, x, k] for each valid keypoint k inside the image, else 0 (uint8)."""
    out = np.zeros((height, width, N_KEYPOINTS), np.uint8)
    x, y = np.asarray(x), np.asarray(y)
    ok = valid_mask(x, y, height, width)
    k = np.nonzero(ok)[0]
    out[y[k], x[k], k] = 1
    return out


def gaussian_map(x: np.ndarray, y: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)) around each valid keypoint (float32); 0 channels for missing."""
    out = np.zeros((height, width, N_KEYPOINTS), np.float32)
    x, y = np.asarray(x), np.asarray(y)
    ok = valid_mask(x, y, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    for k in np.nonzero(ok)[0]:
        out[:, :, k] = np.exp(-((xx - x[k]) ** 2 + (yy - y[k]) ** 2) / (2.0 * sigma**2))
    return out


def render_map(x, y, height: int, width: int, sigma: float | None = None) -> np.ndarray:
    return one_hot_map(x, y, height, width) if sigma is None else gaussian_map(x, y, height, width, sigma)


def out_of_image(x, y, height: int, width: int) -> int:
    """How many present keypoints lie outside the image (they are treated as missing)."""
    present = valid_mask(x, y)
    inside = valid_mask(x, y, height, width)
    return int((present & ~inside).sum())
