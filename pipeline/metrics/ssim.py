"""SSIM as `skimage.metrics.structural_similarity(real, fake, channel_axis=-1)` on uint8
images (7x7 uniform window, data range 255, sample covariance), computed with exact
integer window sums: the same numbers as skimage to ~1e-14, about twice as fast."""

from __future__ import annotations

import numpy as np

WIN = 7  # skimage's default window (uniform filter)
DATA_RANGE = 255.0  # skimage's data range for uint8
K1, K2 = 0.01, 0.03
_NP = WIN * WIN
_COV_NORM = _NP / (_NP - 1)  # skimage's sample-covariance correction


def _window_sums(a: np.ndarray) -> np.ndarray:
    """Sums over every full 7x7 window of (..., H, W) int32 planes -> (..., H-6, W-6).

    Only full windows are needed: skimage crops (WIN-1)//2 pixels from each border of the
    SSIM map, which removes exactly the positions whose window leaves the image. Sums of
    uint8 products over 49 pixels stay below 2^31, so int32 is exact."""
    h = a.shape[-2] - WIN + 1
    rows = a[..., 0:h, :].copy()
    for k in range(1, WIN):
        rows += a[..., k : k + h, :]
    w = a.shape[-1] - WIN + 1
    out = rows[..., 0:w].copy()
    for k in range(1, WIN):
        out += rows[..., k : k + w]
    return out


def ssim_image(real: np.ndarray, fake: np.ndarray) -> float:
    """SSIM of one pair of uint8 (H, W, C) images.

    With window sums Sx, Sy, Sxx, Syy, Sxy over n = 49 pixels, ux = Sx/n, sample
    (co)variances v = n/(n-1) (mean of products - product of means), C1 = (K1 R)^2,
    C2 = (K2 R)^2, R = 255:
        S = (2 ux uy + C1)(2 vxy + C2) / ((ux^2 + uy^2 + C1)(vx + vy + C2)),
    averaged over the full-window positions of each channel, then over channels.
    Multiplying through by n^4 leaves integer terms (n Sxy - Sx Sy etc.) computed exactly
    in int32 before the one float64 division."""
    x = np.ascontiguousarray(real.transpose(2, 0, 1), dtype=np.int32)
    y = np.ascontiguousarray(fake.transpose(2, 0, 1), dtype=np.int32)
    sx, sy = _window_sums(x), _window_sums(y)
    sxx, syy, sxy = _window_sums(x * x), _window_sums(y * y), _window_sums(x * y)
    means = sx * sy  # n^2 ux uy
    squares = sx * sx + sy * sy  # n^2 (ux^2 + uy^2)
    cov = _NP * sxy - means  # n^2 (n-1)/n vxy
    var = _NP * (sxx + syy) - squares  # n^2 (n-1)/n (vx + vy)
    k1 = (K1 * DATA_RANGE) ** 2 * _NP**2
    k2 = (K2 * DATA_RANGE) ** 2 * _NP**2
    num = (2.0 * means + k1) * (2.0 * _COV_NORM * cov + k2)
    den = (squares + k1) * (_COV_NORM * var.astype(np.float64) + k2)
    return float((num / den).mean(axis=(1, 2)).mean())


def ssim_batch(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Per-image SSIM of uint8 (N, H, W, C) batches -> float64 (N,). One image at a time:
    its planes stay in cache, which is faster than one large vectorised pass."""
    if real.shape != fake.shape or real.ndim != 4:
        raise ValueError(
            "ssim_batch needs two (N, H, W, C) arrays of one shape, "
            f"got {real.shape} and {fake.shape}"
        )
    if real.shape[1] < WIN or real.shape[2] < WIN:
        raise ValueError(f"images must be at least {WIN}x{WIN}, got {real.shape[1:3]}")
    return np.array([ssim_image(a, b) for a, b in zip(real, fake, strict=True)], dtype=np.float64)
