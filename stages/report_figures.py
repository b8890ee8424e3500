"""Report figures (drawing only, no scoring): metric-by-checkpoint plots, the SSIM
histogram, condition | target pose | generated | real target grids and the gallery, as PNG bytes."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.imaging import FRAME, ImageError, frame_box, keypoints_to_canvas, read_rgb
from pipeline.core.layout import GenerationLayout
from pipeline.pose.drawing import draw_skeleton

if TYPE_CHECKING:
    from pipeline.core.storage import Location

DIRECTION_STYLE = {
    "AB": ("tab:blue", "o-", "A→B (fake_B)"),
    "BA": ("tab:orange", "s--", "B→A (fake_A)"),
}


def cached_plot(folder: Path | None, draw: Callable[..., bytes], *args) -> bytes:
    """`draw(*args)`, kept in `folder` under the digest of its arguments, this module's
    code and matplotlib's version: a report rebuilt because another of its inputs changed
    (a keypoints row) neither redraws the plots of unchanged numbers nor imports
    matplotlib (seconds). Each plot keeps its last version only."""
    if folder is None:
        return draw(*args)
    key = hashlib.blake2b(digest_size=16)
    key.update(Path(__file__).read_bytes())
    key.update(f"{draw.__name__}|{version('matplotlib')}".encode())
    for arg in args:
        if isinstance(arg, pd.DataFrame):
            header = [list(map(str, arg.columns)), list(map(str, arg.dtypes))]
            key.update(json.dumps(header).encode())
            key.update(pd.util.hash_pandas_object(arg, index=False).to_numpy().tobytes())
        else:
            key.update(json.dumps(arg).encode())
    path = folder / f"{draw.__name__}.{key.hexdigest()}.png"
    if path.is_file():
        return path.read_bytes()
    png = draw(*args)
    for old in folder.glob(f"{draw.__name__}.*.png"):
        old.unlink(missing_ok=True)
    write_bytes_atomic(path, png)
    return png


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _ckpt_positions(ckpts: list[str]) -> tuple[list, bool]:
    numeric = all(c.isdigit() for c in ckpts)
    return ([int(c) for c in ckpts] if numeric else list(range(len(ckpts)))), numeric


def metrics_plot(summary: pd.DataFrame, metrics: list[str], ckpts: list[str]) -> bytes:
    """One panel per metric: its value at each checkpoint, one line per direction."""
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = _subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    xs, numeric = _ckpt_positions(ckpts)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for direction, (colour, style, label) in DIRECTION_STYLE.items():
            part = summary[(summary["metric"] == metric) & (summary["direction"] == direction)]
            values = [part.loc[part["checkpoint"] == c, "mean"].mean() for c in ckpts]
            stds = [part.loc[part["checkpoint"] == c, "std"].mean() for c in ckpts]
            ax.plot(xs, values, style, color=colour, label=label, alpha=0.85)
            if not np.all(np.isnan(np.asarray(stds, float))):
                lo = np.asarray(values) - np.asarray(stds)
                hi = np.asarray(values) + np.asarray(stds)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15)
        ax.set_title(metric.upper() if len(metric) <= 5 else metric)
        ax.set_xlabel("checkpoint (iteration)" if numeric else "checkpoint")
        if not numeric:
            ax.set_xticks(xs, ckpts)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are rendered on cluster nodes without a display
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _single_panel_png(fig, ax, xlabel: str, ylabel: str) -> bytes:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def ssim_histogram(ssim: pd.DataFrame, ckpts: list[str]) -> bytes:
    """Per-image SSIM distribution of each checkpoint (both directions together)."""
    fig, ax = _subplots(figsize=(7, 3.2))
    ok = ssim[ssim["error"].isna()]
    bins = np.linspace(min(0.0, ok["value"].min()), 1.0, 41)
    for c in ckpts:
        values = ok.loc[ok["checkpoint"] == c, "value"]
        ax.hist(
            values, bins=bins, histtype="step", linewidth=1.5, label=f"iter {c} (n={len(values)})"
        )
    return _single_panel_png(fig, ax, "SSIM per image", "images")


def loss_plot(log: pd.DataFrame) -> bytes:
    """Generator and discriminator losses per iteration (a rolling mean over 20 steps)."""
    fig, ax = _subplots(figsize=(7, 3.2))
    for column in ("g_total", "g_l1", "g_gan", "g_perceptual", "d_total"):
        if column in log and log[column].notna().any() and log[column].abs().sum() > 0:
            ax.plot(log["iteration"], log[column].rolling(20, min_periods=1).mean(), label=column)
    ax.set_yscale("log")
    return _single_panel_png(fig, ax, "iteration", "loss (rolling mean of 20)")


def _tile(gen_root: Location, rel: str | None, height: int) -> Image.Image:
    """An image scaled to `height`, or a grey tile naming what is missing."""
    try:
        if rel is None:
            raise ImageError("no image for this pair")
        return _scaled(read_rgb(gen_root, rel), height)
    except ImageError as exc:
        tile = Image.new("RGB", (round(height * FRAME[1] / FRAME[0]), height), (200, 200, 200))
        ImageDraw.Draw(tile).text((4, 4), f"missing:\n{str(exc)[:40]}", fill=(0, 0, 0))
        return tile


def _scaled(im: Image.Image, height: int) -> Image.Image:
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.BICUBIC)


def pose_tile(pose: tuple | None, height: int) -> Image.Image:
    """The target pose the generator was given, drawn as a skeleton on the network's frame:
    `pose` = (x, y, image height, image width) of the target's keypoints row."""
    canvas = Image.new("RGB", (FRAME[1], FRAME[0]), (255, 255, 255))
    if pose is None:
        ImageDraw.Draw(canvas).text((4, 4), "no keypoints\nfor the target", fill=(0, 0, 0))
        return _scaled(canvas, height)
    x, y, h, w = pose
    x, y = keypoints_to_canvas(x, y, frame_box(int(w), int(h)))
    return _scaled(draw_skeleton(canvas, x, y, (200, 30, 30)), height)


def _compose(headers: list[str], lines: list[tuple[list[Image.Image], str]], height: int) -> bytes:
    """Rows of tiles under one header line, each row captioned, as PNG bytes."""
    header, caption, gap = 22, 16, 6
    widths = [max(tiles[i].width for tiles, _ in lines) for i in range(len(headers))]
    canvas = Image.new(
        "RGB", (sum(widths) + gap * len(widths), header + len(lines) * (height + caption + gap)),
        (255, 255, 255),
    )  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, w in zip(headers, widths, strict=True):
        draw.text((x + 4, 4), label, fill=(0, 0, 0))
        x += w + gap
    y = header
    for tiles, text in lines:
        x = 0
        for t, w in zip(tiles, widths, strict=True):
            canvas.paste(t, (x, y))
            x += w + gap
        draw.text((4, y + height + 2), text, fill=(60, 60, 60))
        y += height + caption + gap
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def pair_grid(gen_root: Location, rows: pd.DataFrame, poses: dict, height: int = 160) -> bytes:
    """Rows of condition | target pose | generated | real target, each captioned with its
    SSIM and file name; `poses`: file id -> the target's keypoints (see `pose_tile`)."""
    lines = []
    for r in rows.itertuples(index=False):
        target = GenerationLayout.parse_name(r.name)
        lines.append((
            [_tile(gen_root, r.condition_path, height),
             pose_tile(poses.get(target[1]) if target else None, height),
             _tile(gen_root, r.fake_path, height), _tile(gen_root, r.real_path, height)],
            f"SSIM {r.value:.3f}   {r.name}",
        ))  # fmt: skip
    return _compose(["condition", "target pose", "generated", "real target"], lines, height)


def gallery(
    gen_root: Location,
    pairs: pd.DataFrame,
    ckpts: list[str],
    poses: dict,
    k: int,
    height: int = 160,
) -> bytes:
    """The same k pairs (evenly spread over the test pairs) generated by every checkpoint:
    condition | target pose | one column per checkpoint | real target."""
    ok = pairs[pairs["error"].isna()]
    names = sorted(set(ok["name"]), key=GenerationLayout.name_order)
    picked = [names[i] for i in np.linspace(0, len(names) - 1, min(k, len(names))).astype(int)]
    fake = ok.set_index(["checkpoint", "name"])["fake_path"]
    first = ok.drop_duplicates("name").set_index("name")
    lines = []
    for name in picked:
        row, target = first.loc[name], GenerationLayout.parse_name(name)
        tiles = [_tile(gen_root, row["condition_path"], height),
                 pose_tile(poses.get(target[1]) if target else None, height)]  # fmt: skip
        tiles += [_tile(gen_root, fake.get((c, name)), height) for c in ckpts]
        lines.append(([*tiles, _tile(gen_root, row["real_path"], height)], name))
    headers = ["condition", "target pose", *(f"generated: {c}" for c in ckpts), "real target"]
    return _compose(headers, lines, height)
