"""Pose maps from keypoints: the published one-hot `uint8 H x W x 18` array, or a
gaussian variant, and their legacy npz files. Shared by the posemaps stage and on-the-fly
rendering."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from pipeline.core import storage
from pipeline.pose.skeleton import N_KEYPOINTS, valid_mask


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
    return (
        one_hot_map(x, y, height, width)
        if sigma is None
        else gaussian_map(x, y, height, width, sigma)
    )


def out_of_image(x, y, height: int, width: int) -> int:
    """How many present keypoints lie outside the image (they are treated as missing)."""
    present = valid_mask(x, y)
    inside = valid_mask(x, y, height, width)
    return int((present & ~inside).sum())


def npz_bytes(pose_map: np.ndarray) -> bytes:
    """The npz numpy.savez_compressed writes (one member `arr_0.npy`, deflated), at zlib
    level 1: the same array for np.load(f)['arr_0'], 2.5x faster to write than the default
    level 6, about 4 KB instead of 1 KB per one-hot map."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("arr_0.npy", "w") as member:
            np.lib.format.write_array(member, np.asanyarray(pose_map), allow_pickle=False)
    return buf.getvalue()


def write_posemap(path, x, y, height: int, width: int, sigma: float | None = None) -> None:
    """Write a map's npz atomically to a local path or an object-store key."""
    storage.write_bytes(path, npz_bytes(render_map(x, y, height, width, sigma)))


def load_posemap(path) -> np.ndarray:
    """A map's array from a local path or an object-store key (read whole)."""
    with np.load(storage.readable(path)) as data:
        return data["arr_0"]


def one_hot_coords(pose_map: np.ndarray) -> np.ndarray | None:
    """(K, 2) int16 (y, x) of the single 1 in each channel of a one-hot (H, W, K) map, -1
    where a channel is empty; None when the map is not one-hot (gaussian, or a channel with
    several marks), so the caller keeps it dense."""
    if pose_map.dtype != np.uint8:
        return None
    height, width, k = pose_map.shape
    flat = np.ascontiguousarray(pose_map).reshape(-1)
    # A map is almost all zeros: scanning it as 8-byte words is ~15x faster than
    # np.nonzero over the bytes (0.3 vs 4.5 ms for 256 x 176 x 18), then only the few
    # nonzero words are looked at byte by byte.
    whole = flat.size // 8 * 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    candidates = np.concatenate([(words[:, None] * 8 + np.arange(8)).ravel(),
                                 np.arange(whole, flat.size)])  # fmt: skip
    idx = candidates[flat[candidates] != 0]
    if (flat[idx] != 1).any():
        return None
    ys, rest = np.divmod(idx, width * k)
    xs, ks = np.divmod(rest, k)
    if len(np.unique(ks)) != len(ks):
        return None
    coords = np.full((k, 2), -1, np.int16)
    coords[ks, 0], coords[ks, 1] = ys, xs
    return coords


def fit_coords(coords: np.ndarray, size: tuple[int, int], frame: tuple[int, int]) -> np.ndarray:
    """(K, 2) (y, x) marks of a map of `size` (h, w), moved to where `imaging.fit_frame`
    puts their pixels in `frame` (h, w); missing and cropped-out ones are -1."""
    from pipeline.core.imaging import frame_box, keypoints_to_canvas

    box = frame_box(size[1], size[0], frame)
    x, y = keypoints_to_canvas(coords[:, 1], coords[:, 0], box)
    return np.stack([y, x], axis=1).astype(np.int16)


def fit_map(pose_map: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """A pose map brought to `frame` (h, w) as its image is by `imaging.fit_frame`: one-hot
    marks moved to where their pixels land (still one-hot), other maps resampled
    bilinearly per channel, zero where the image is padded."""
    from PIL import Image

    from pipeline.core.imaging import frame_box

    height, width = pose_map.shape[:2]
    coords = one_hot_coords(pose_map)
    if coords is not None:
        y, x = fit_coords(coords, (height, width), frame).T
        return one_hot_map(x, y, *frame)
    box = frame_box(width, height, frame)
    out = np.zeros((*frame, pose_map.shape[2]), np.float32)
    for k in range(pose_map.shape[2]):
        channel = Image.fromarray(pose_map[..., k].astype(np.float32))
        scaled = np.asarray(channel.resize((box.scaled_w, box.height), Image.BILINEAR))
        kept = scaled[:, box.crop_x0 : box.crop_x0 + box.width]
        out[:, box.left : box.left + box.width, k] = kept
    return out
