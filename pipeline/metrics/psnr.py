"""PSNR per image, as `skimage.metrics.peak_signal_noise_ratio` on uint8 images."""

from __future__ import annotations

import numpy as np


def psnr_batch(real: np.ndarray, fake: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-image PSNR of (N, H, W, C) batches -> float64 (N,):
    10 log10(R^2 / MSE), MSE the mean squared difference; +inf for identical images."""
    diff = real.astype(np.float64) - fake.astype(np.float64)
    mse = (diff * diff).reshape(len(diff), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)
