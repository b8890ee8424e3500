"""Drawing, kept away from computing: skeleton overlays and image grids for training
samples and reports."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.pose.skeleton import LIMBS, valid_mask

RGB = tuple[int, int, int]


def draw_skeleton(
    im: Image.Image, x: np.ndarray, y: np.ndarray, colour: RGB = (255, 0, 0)
) -> Image.Image:
    """Overlay keypoints and limbs on a copy of `im` (for grids and reports)."""
    out = im.copy()
    d = ImageDraw.Draw(out)
    ok = valid_mask(x, y)
    for a, b in LIMBS:
        if ok[a] and ok[b]:
            d.line([(int(x[a]), int(y[a])), (int(x[b]), int(y[b]))], fill=colour, width=2)
    for k in np.nonzero(ok)[0]:
        d.ellipse([x[k] - 2, y[k] - 2, x[k] + 2, y[k] + 2], fill=colour)
    return out


def grid(
    rows: list[list[Image.Image]], pad: int = 4, background: RGB = (255, 255, 255)
) -> Image.Image:
    """Tile images row by row (each row: condition | target | generated, say)."""
    cell_w = max(im.width for row in rows for im in row)
    cell_h = max(im.height for row in rows for im in row)
    n_cols = max(len(row) for row in rows)
    out = Image.new(
        "RGB", (n_cols * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), background
    )
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            out.paste(im, (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return out
