"""Pose-maps stage: one `<file_id>.npz` per image (legacy one-hot uint8 H x W x 18 under
`arr_0`, or gaussian), written atomically in parallel Ray tasks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.posemap import render_map
from pipeline.tables import write_bytes_atomic


def npz_bytes(pose_map: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, pose_map)   # default key arr_0, as the published utility
    return buf.getvalue()


def write_posemap(path: Path, x, y, height: int, width: int, sigma: float | None = None) -> None:
    write_bytes_atomic(path, npz_bytes(render_map(x, y, height, width, sigma)))


def load_posemap(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["arr_0"]
