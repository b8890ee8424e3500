"""Synthetic figures drawn along OpenPose-18 keypoints: one identity's look (clothing
colours, texture, skin, hair) on an articulated body, on white."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.pose.drawing import RGB


@dataclass(frozen=True)
class Appearance:
    """One identity's look: clothing colours, texture, skin and hair."""

    top: RGB
    top_accent: RGB
    bottom: RGB
    skin: RGB
    hair: RGB
    shoes: RGB
    texture: str  # plain | stripes | dots | checks
    texture_period: int


def _textured(size: tuple[int, int], app: Appearance) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size, app.top)
    d = ImageDraw.Draw(im)
    p = app.texture_period
    if app.texture == "stripes":
        for yy in range(0, h, p):
            d.rectangle([0, yy, w, yy + p // 2 - 1], fill=app.top_accent)
    elif app.texture == "dots":
        for yy in range(p // 2, h, p):
            for xx in range((yy // p % 2) * p // 2, w, p):
                d.ellipse([xx - 2, yy - 2, xx + 2, yy + 2], fill=app.top_accent)
    elif app.texture == "checks":
        for yy in range(0, h, p):
            for xx in range(0, w, p):
                if (xx // p + yy // p) % 2 == 0:
                    d.rectangle([xx, yy, xx + p - 1, yy + p - 1], fill=app.top_accent)
    return im


def _pt(x: np.ndarray, y: np.ndarray, k: int) -> tuple[int, int]:
    return int(x[k]), int(y[k])


def draw_figure(
    x: np.ndarray,
    y: np.ndarray,
    anchors: dict[str, tuple[int, int]],
    app: Appearance,
    view: str,
    size: tuple[int, int],
) -> Image.Image:
    """Render a figure on white. `x`, `y`: OpenPose-18 keypoints (-1 = not visible);
    `anchors`: body points drawn even when their keypoint is hidden (head centre,
    shoulders, hips). Every visible keypoint lands on a painted pixel."""
    w, h = size
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)

    def limb(a: tuple[int, int], b: tuple[int, int], colour: RGB, width: int) -> None:
        d.line([a, b], fill=colour, width=width)
        r = width // 2
        for px, py in (a, b):
            d.ellipse([px - r, py - r, px + r, py + r], fill=colour)

    rs, ls = anchors["r_shoulder"], anchors["l_shoulder"]
    rh, lh = anchors["r_hip"], anchors["l_hip"]
    head = anchors["head"]
    neck = anchors["neck"]
    # Legs first (behind the torso).
    for hip, knee, ankle in ((rh, 9, 10), (lh, 12, 13)):
        kx, ky = anchors[f"k{knee}"]
        ax, ay = anchors[f"k{ankle}"]
        limb(hip, (kx, ky), app.bottom, 15)
        limb((kx, ky), (ax, ay), app.bottom, 13)
        d.ellipse([ax - 7, ay - 3, ax + 7, ay + 5], fill=app.shoes)
    # Neck, then the textured torso.
    limb(neck, (head[0], head[1] + 8), app.skin, 10)
    torso = [rs, ls, lh, rh]
    tex = _textured((w, h), app)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(torso, fill=255)
    ImageDraw.Draw(mask).line([rs, ls], fill=255, width=10)
    im.paste(tex, (0, 0), mask)
    d.ellipse([neck[0] - 6, neck[1] - 4, neck[0] + 6, neck[1] + 4], fill=app.top_accent)
    # Arms: sleeve in the top colour, forearm skin, a hand at the wrist.
    for sh, elbow, wrist in ((rs, 3, 4), (ls, 6, 7)):
        e = anchors[f"k{elbow}"]
        wr = anchors[f"k{wrist}"]
        limb(sh, e, app.top, 11)
        limb(e, wr, app.skin, 8)
        d.ellipse([wr[0] - 5, wr[1] - 5, wr[0] + 5, wr[1] + 5], fill=app.skin)
    # Head: hair behind, face (or hair only from the back), ears, eyes.
    hx, hy = head
    d.ellipse([hx - 14, hy - 17, hx + 14, hy + 15], fill=app.hair)
    if view != "back":
        d.ellipse([hx - 11, hy - 11, hx + 11, hy + 15], fill=app.skin)
    for k in (16, 17):
        if x[k] >= 0:
            ex, ey = _pt(x, y, k)
            d.ellipse([ex - 4, ey - 5, ex + 4, ey + 5], fill=app.skin)
    for k in (14, 15):
        if x[k] >= 0:
            ex, ey = _pt(x, y, k)
            d.ellipse([ex - 2, ey - 2, ex + 2, ey + 2], fill=(40, 30, 30))
    if x[0] >= 0:
        nx, ny = _pt(x, y, 0)
        d.ellipse([nx - 2, ny - 2, nx + 2, ny + 2], fill=tuple(int(c * 0.8) for c in app.skin))
    return im
