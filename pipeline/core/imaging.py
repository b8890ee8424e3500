"""Image I/O and conversions: robust RGB loading, [-1, 1] tensors, output mappings, and
the published API's resize-pad to 256 x 256 (or to the generator's frame) and its inverse."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.errors import ImageError

if TYPE_CHECKING:  # torch loads only where tensors are made: decode workers stay light
    import torch

    from pipeline.core.config import StorageConfig
    from pipeline.core.storage import Target

CANVAS = 256
CONTENT_W = 176  # DeepFashion frames are 256 x 176 (h x w)
JPEG_QUALITY = 95


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB: grey (16-bit grey scaled to 8 bits), palette, alpha
    (composited on white) and CMYK are converted; empty, truncated and non-image files, and
    32-bit integer or float pixels, raise ImageError with the reason. An object-store URI
    is read whole (one GET) and decoded the same way."""
    from pipeline.core import storage

    if not storage.is_local(path):
        try:
            return decode_rgb(storage.read_bytes(path))
        except FileNotFoundError as exc:
            raise ImageError(f"cannot read: {exc}") from exc
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    return _open_rgb(path)


def _open_rgb(source) -> Image.Image:
    """A path or file object decoded to RGB; what PIL cannot read becomes an ImageError."""
    try:
        with Image.open(source) as im:
            im.load()
            return to_rgb(im)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image: {exc}") from exc


def decode_rgb(data: bytes) -> Image.Image:
    """Like `load_rgb` for bytes already read."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _open_rgb(io.BytesIO(data))


def read_rgb(root: Target, rel: str, storage_cfg: StorageConfig | None = None) -> Image.Image:
    """The image `rel` under `root` (a local folder, an s3:// URI or a storage Location) as
    RGB: a local file as `load_rgb` opens it, an object read whole into memory and decoded;
    a missing object is an ImageError, as a missing file is. A `rel` that escapes `root`
    raises DataError (storage.safe_join)."""
    from pipeline.core import storage

    loc = storage.safe_join(storage.resolve(root, storage_cfg), rel)
    if loc.is_local:
        return load_rgb(loc.path)
    try:
        data = storage.read_bytes(loc)
    except FileNotFoundError as exc:
        raise ImageError(f"cannot read: {exc}") from exc
    return decode_rgb(data)


# Concurrent reads per batch on object storage, where each read is a round trip.
OBJECT_READ_THREADS = 8


def read_rgb_many(
    root: Target, rels: list[str], storage_cfg: StorageConfig | None = None
) -> list[Image.Image | ImageError]:
    """`read_rgb` of each of `rels`, in order, an ImageError in the place of an image that
    does not load. On object storage the reads overlap (threads), so a batch costs about
    one round trip instead of one per image; local files are read one after another."""
    from pipeline.core import storage

    def one(rel: str) -> Image.Image | ImageError:
        try:
            return read_rgb(root, rel, storage_cfg)
        except ImageError as exc:
            return exc

    if storage.is_local(root) or len(rels) < 2:
        return [one(rel) for rel in rels]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(OBJECT_READ_THREADS, len(rels))) as pool:
        return list(pool.map(one, rels))


def to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im) if im.format == "JPEG" else im
    if im.mode.startswith("I;16"):
        # PIL's convert clips 16-bit values at 255, which turns a 16-bit grey PNG white.
        wide = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        # 32-bit pixels have no fixed range that says which value is white.
        kind = "integer" if im.mode == "I" else "float"
        raise ImageError(
            f"32-bit {kind} pixels (PIL mode {im.mode}) have no fixed range to map to 8 bits; "
            "save the image with 8 or 16 bits per channel"
        )
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def to_tensor(im: Image.Image | np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float in [-1, 1]."""
    import torch

    arr = np.array(im, dtype=np.uint8)  # a writable copy: PIL-backed arrays are read-only
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor, minmax: bool = False) -> np.ndarray:
    """Generator output (C,H,W) or (N,C,H,W) in [-1, 1] -> HWC / NHWC uint8.

    Default mapping (x + 1) / 2, rounded. `minmax`: the published test script's conversion
    (`published_uint8`).
    """
    import torch

    if minmax:
        return published_uint8(x)
    x = x.detach().float().cpu()
    batched = x.dim() == 4
    if not batched:
        x = x[None]
    x = (x + 1.0) / 2.0
    out = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out if batched else out[0]


def published_uint8(x: torch.Tensor) -> np.ndarray:
    """(C,H,W) or (N,C,H,W) float -> HWC / NHWC uint8 as the published test script saved
    images: per image, `make_grid(normalize=True)` (clamp to its own [min, max], subtract the
    min, divide by max(max - min, 1e-5)), then `ToPILImage` (times 255, truncated)."""
    x = x.detach().float().cpu()
    batched = x.dim() == 4
    if not batched:
        x = x[None]
    out = np.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), np.uint8)
    for i, image in enumerate(x):
        # The same float32 operations with the same Python-float bounds as make_grid: truncation
        # turns a last-bit difference at a whole number (127.99999 vs 128.0) into a grey level.
        low, high = float(image.min()), float(image.max())
        image = image.clamp(min=low, max=high).sub(low).div(max(high - low, 1e-5))
        out[i] = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return out if batched else out[0]


def published_input_tensor(arr: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float as the published data loader made it: ToTensor (divide by 255)
    then Normalize(0.5, 0.5). The same operations as `to_tensor` on paper, not to the last
    bit, which `published_uint8`'s truncation can turn into a different grey level."""
    import torch

    chw = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)
    return chw.float().div(255).sub(0.5).div(0.5)


def encode_jpeg(arr: np.ndarray, quality: int | None = JPEG_QUALITY) -> bytes:
    """JPEG bytes; quality None: PIL's defaults (quality 75, 4:2:0 chroma subsampling), as the
    published test script saved."""
    buf = io.BytesIO()
    options = {} if quality is None else {"quality": quality}
    Image.fromarray(arr).save(buf, format="JPEG", **options)
    return buf.getvalue()


@dataclass(frozen=True)
class PadBox:
    """Where an image's content sits on the canvas, to undo the padding."""

    orig_w: int
    orig_h: int
    scaled_w: int  # width after scaling the height to the canvas height
    crop_x0: int  # columns cropped from the scaled image on the left
    left: int  # canvas column where the content starts
    width: int  # content width on the canvas
    height: int = CANVAS  # canvas (and content) height
    canvas_w: int = CANVAS


# The generator's input: DeepFashion's frame, the published API's content area.
FRAME = (CANVAS, CONTENT_W)  # (h, w)


def pad_box(
    w: int, h: int, height: int = CANVAS, content_w: int = CONTENT_W, canvas_w: int = CANVAS
) -> PadBox:
    """Where `resize_pad` puts the content of a w x h image."""
    scaled_w = max(1, int(w * height / h))
    crop_x0 = max(0, (scaled_w - content_w) // 2)
    width = min(scaled_w, content_w)
    left = (canvas_w - width) // 2
    return PadBox(w, h, scaled_w, crop_x0, left, width, height, canvas_w)


def resize_pad(
    im: Image.Image, height: int = CANVAS, content_w: int = CONTENT_W, canvas_w: int = CANVAS
) -> tuple[Image.Image, PadBox]:
    """The published API's preprocessing on a `height` x `canvas_w` canvas: scale to
    `height` (bicubic, width floored), centre-crop the width to at most `content_w`, then
    pad with white to the canvas."""
    box = pad_box(*im.size, height, content_w, canvas_w)
    scaled = im.convert("RGB").resize((box.scaled_w, height), Image.BICUBIC)
    content = scaled.crop((box.crop_x0, 0, box.crop_x0 + box.width, height))
    canvas = Image.new("RGB", (canvas_w, height), (255, 255, 255))
    canvas.paste(content, (box.left, 0))
    return canvas, box


def resize_pad_256(im: Image.Image) -> tuple[Image.Image, PadBox]:
    """The published API's preprocessing: scale to height 256, centre-crop the width to at
    most 176, then pad with white to 256 x 256."""
    return resize_pad(im, CANVAS, CONTENT_W, CANVAS)


def frame_box(w: int, h: int, frame: tuple[int, int] = FRAME) -> PadBox:
    """Where `fit_frame` puts the content of a w x h image."""
    return pad_box(w, h, frame[0], frame[1], frame[1])


def fit_frame(im: Image.Image, frame: tuple[int, int] = FRAME) -> Image.Image:
    """An image brought to `frame` (h, w) the way the published API brings it to its
    canvas: scaled to the frame's height, centre-cropped or padded with white to its width."""
    return resize_pad(im, frame[0], frame[1], frame[1])[0]


def unpad_256(canvas: Image.Image, box: PadBox) -> Image.Image:
    """Inverse of `resize_pad_256`: an image of the original size whose visible region
    is the canvas content scaled back; columns the crop removed stay white."""
    content = canvas.crop((box.left, 0, box.left + box.width, box.height))
    scale = box.orig_h / box.height
    x0 = int(round(box.crop_x0 * scale))
    x1 = min(box.orig_w, int(round((box.crop_x0 + box.width) * scale)))
    out = Image.new("RGB", (box.orig_w, box.orig_h), (255, 255, 255))
    out.paste(content.resize((max(1, x1 - x0), box.orig_h), Image.BICUBIC), (x0, 0))
    return out


def keypoints_to_canvas(x: np.ndarray, y: np.ndarray, box: PadBox) -> tuple[np.ndarray, np.ndarray]:
    """Map original-image keypoints onto the canvas (missing and cropped-out: -1)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    s = box.height / box.orig_h
    cx = np.round(x * s - box.crop_x0 + box.left).astype(np.int32)
    cy = np.round(y * s).astype(np.int32)
    bad = (x < 0) | (y < 0) | (cx < box.left) | (cx >= box.left + box.width) | (cy >= box.height)
    cx[bad] = -1
    cy[bad] = -1
    return cx, cy
