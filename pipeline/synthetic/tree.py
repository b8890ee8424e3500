"""A deterministic DeepFashion-like synthetic tree: articulated figures with per-identity
clothing, several poses per identity, white background, 256 x 176, known keypoints."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.legacy_csv import write_image_list, write_keypoints_csv
from pipeline.core.paths import file_id
from pipeline.synthetic.figures import Appearance, draw_figure

HEIGHT, WIDTH = 256, 176
GROUND_TRUTH_CSV = "ground_truth_keypoints.csv"
# The DeepFashion In-shop tree behind the published pairs: images in identity folders.
DEEPFASHION_IMAGES, DEEPFASHION_IDENTITIES = 52_712, 7_982
CATEGORIES = {
    "MEN": ("Denim", "Jackets_Vests", "Pants", "Shirts_Polos", "Tees_Tanks"),
    "WOMEN": ("Blouses_Shirts", "Dresses", "Cardigans", "Skirts", "Tees_Tanks"),
}
# DeepFashion view names by view index k in <NN>_<k>_<view>.jpg.
VIEWS = ("front", "side", "back", "full", "additional", "additional", "additional", "additional")
TEXTURES = ("plain", "stripes", "dots", "checks")


@dataclass(frozen=True)
class SynthImage:
    path: str  # relative to the dataset root
    split: str
    x: np.ndarray
    y: np.ndarray


def _colour(rng: np.random.Generator, lo: int = 20, hi: int = 200) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    skin_base = rng.choice([[224, 172, 140], [198, 134, 100], [141, 85, 60], [236, 190, 160]])
    return Appearance(
        top=_colour(rng),
        top_accent=_colour(rng),
        bottom=_colour(rng, 10, 160),
        skin=tuple(int(v) for v in np.clip(skin_base + rng.integers(-8, 9, 3), 0, 235)),
        hair=_colour(rng, 10, 110),
        shoes=_colour(rng, 0, 80),
        texture=str(rng.choice(TEXTURES)),
        texture_period=int(rng.integers(6, 14)),
    )


def _direction(angle_deg: float) -> np.ndarray:
    """Unit vector for an angle from straight down, positive towards image right."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), math.cos(a)])


def sample_pose(rng: np.random.Generator, view: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """One articulated pose: OpenPose-18 keypoints (hidden ones -1) and drawing anchors."""
    s = rng.uniform(0.92, 1.04)
    cx = WIDTH / 2 + rng.uniform(-12, 12)
    top = rng.uniform(-4, 8)
    shoulder_half = {"side": 5.0}.get(view, 22.0) * s
    hip_half = {"side": 4.0}.get(view, 13.0) * s
    # Image-left is the person's right when they face the camera, and the reverse from behind.
    right_sign = 1.0 if view == "back" else -1.0
    pts: dict[int, np.ndarray] = {}
    head = np.array([cx + rng.uniform(-3, 3), top + 38 * s])
    neck = np.array([cx, top + 63 * s])
    pts[1] = neck
    pts[2] = neck + [right_sign * shoulder_half, 4 * s]
    pts[5] = neck + [-right_sign * shoulder_half, 4 * s]
    pts[8] = np.array([cx + right_sign * hip_half, top + 136 * s])
    pts[11] = np.array([cx - right_sign * hip_half, top + 136 * s])
    for side, (sh, el, wr) in ((right_sign, (2, 3, 4)), (-right_sign, (5, 6, 7))):
        upper = rng.uniform(-25, 150)
        fore = upper + rng.uniform(-40, 100)
        pts[el] = pts[sh] + 37 * s * _direction(side * upper)
        pts[wr] = pts[el] + 33 * s * _direction(side * fore)
    for side, (hp, kn, an) in ((right_sign, (8, 9, 10)), (-right_sign, (11, 12, 13))):
        thigh = rng.uniform(-6, 22)
        shin = thigh + rng.uniform(-18, 12)
        pts[kn] = pts[hp] + 50 * s * _direction(side * thigh)
        pts[an] = pts[kn] + 48 * s * _direction(side * shin)
    face_dir = {"side": float(rng.choice([-1.0, 1.0]))}.get(view, 0.0)
    pts[0] = head + [face_dir * 9, 3 * s]
    pts[14] = head + [right_sign * 6 * s + face_dir * 5, -3 * s]
    pts[15] = head + [-right_sign * 6 * s + face_dir * 5, -3 * s]
    pts[16] = head + [right_sign * 12 * s, 1 * s]
    pts[17] = head + [-right_sign * 12 * s, 1 * s]
    hidden: set[int] = set()
    if view == "back":
        hidden |= {0, 14, 15}
    elif view == "side":
        # Only the near eye and ear show; the far ones are behind the head.
        hidden |= {14, 16} if face_dir > 0 else {15, 17}
    x = np.full(18, -1, np.int32)
    y = np.full(18, -1, np.int32)
    for k, p in pts.items():
        px = int(np.clip(round(p[0]), 3, WIDTH - 4))
        py = int(np.clip(round(p[1]), 3, HEIGHT - 4))
        pts[k] = np.array([px, py])
        if k not in hidden:
            x[k], y[k] = px, py
    anchors = {
        "head": (int(round(head[0])), int(round(head[1]))),
        "neck": tuple(int(v) for v in pts[1]),
        "r_shoulder": tuple(int(v) for v in pts[2]),
        "l_shoulder": tuple(int(v) for v in pts[5]),
        "r_hip": tuple(int(v) for v in pts[8]),
        "l_hip": tuple(int(v) for v in pts[11]),
        **{f"k{k}": tuple(int(v) for v in pts[k]) for k in (3, 4, 6, 7, 9, 10, 12, 13)},
    }
    return x, y, anchors


def plan_tree(identities: int, seed: int, test_fraction: float = 0.2) -> list[tuple[str, str, int]]:
    """(identity folder, split, identity seed) for each identity; split by identity."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 10_000_000), size=identities, replace=False)
    folders = []
    for i, ident in enumerate(sorted(ids)):
        gender = ("MEN", "WOMEN")[i % 2]
        cats = CATEGORIES[gender]
        folders.append(f"{gender}/{cats[int(rng.integers(len(cats)))]}/id_{int(ident):08d}")
    n_test = max(1, int(round(identities * test_fraction)))
    test = set(rng.permutation(identities)[:n_test].tolist())
    return [
        (f, "test" if i in test else "train", seed * 1_000_003 + i) for i, f in enumerate(folders)
    ]


def generate_identity(
    folder: str, split: str, ident_seed: int, poses: int
) -> list[tuple[SynthImage, bytes]]:
    rng = np.random.default_rng(ident_seed)
    app = sample_appearance(rng)
    out = []
    for k in range(1, poses + 1):
        view = VIEWS[(k - 1) % len(VIEWS)]
        x, y, anchors = sample_pose(rng, view)
        im = draw_figure(x, y, anchors, app, view, (WIDTH, HEIGHT))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        rel = f"img/{folder}/01_{k}_{view}.jpg"
        out.append((SynthImage(rel, split, x, y), buf.getvalue()))
    return out


def deepfashion_poses(
    images: int = DEEPFASHION_IMAGES, identities: int = DEEPFASHION_IDENTITIES
) -> list[int]:
    """Images per identity for a tree of `images` in DeepFashion's proportions (6.6 per
    identity on average): each identity gets the floor, the first ones one more."""
    base, extra = divmod(images, identities)
    return [base + (i < extra) for i in range(identities)]


def write_identities(out: str, plan: list[tuple[str, str, int, int]]) -> list[SynthImage]:
    """Write the images of (folder, split, identity seed, poses) identities under `out`."""
    images = []
    for folder, split, ident_seed, poses in plan:
        for img, data in generate_identity(folder, split, ident_seed, poses):
            write_bytes_atomic(Path(out) / img.path, data)
            images.append(img)
    return images


def write_synthetic_tree(
    out: str | Path,
    identities: int = 40,
    poses_per_identity: int | list[int] = 6,
    seed: int = 0,
    test_fraction: float = 0.2,
    parallel: bool = False,
) -> pd.DataFrame:
    """Write the tree, the image lists and the ground-truth keypoints CSV under `out`.
    `poses_per_identity`: one count for all, or one per identity. `parallel` draws the
    identities in Ray tasks (a DeepFashion-sized tree takes minutes on one core). Returns
    the ground-truth table (path, file_id, split, x, y). Same seed: same bytes."""
    from tqdm import tqdm

    out = Path(out)
    poses = (
        [poses_per_identity] * identities
        if isinstance(poses_per_identity, int)
        else list(poses_per_identity)
    )
    plan = [
        (folder, split, ident_seed, n)
        for (folder, split, ident_seed), n in zip(
            plan_tree(identities, seed, test_fraction), poses, strict=True
        )
    ]
    images: list[SynthImage] = []
    if parallel:
        import ray

        from pipeline.cluster.runtime import init_ray

        init_ray()
        task = ray.remote(write_identities)
        chunks = [plan[i : i + 200] for i in range(0, len(plan), 200)]
        pending = [task.remote(str(out), c) for c in chunks]
        with tqdm(total=len(chunks), desc="synth", unit="chunk", leave=False) as bar:
            while pending:
                ready, pending = ray.wait(pending)
                images += ray.get(ready[0])
                bar.update()
    else:
        for entry in tqdm(plan, desc="synth", unit="identity", leave=False):
            images += write_identities(str(out), [entry])
    images.sort(key=lambda im: im.path)
    table = pd.DataFrame(
        {
            "path": [im.path for im in images],
            "file_id": [file_id(im.path) for im in images],
            "split": [im.split for im in images],
            "img_h": HEIGHT,
            "img_w": WIDTH,
            "x": [im.x for im in images],
            "y": [im.y for im in images],
        }
    )
    for split in ("train", "test"):
        write_image_list(
            table.loc[table.split == split, "path"].tolist(), out / f"{split}_img_list.csv"
        )
    write_keypoints_csv(table, out / GROUND_TRUTH_CSV)
    return table


def ensure_synthetic_tree(root: str | Path, identities: int, poses: int, seed: int) -> bool:
    """Write the tree unless the same one is already there (True when written): rewriting
    identical files would only cost time."""
    root = Path(root)
    marker = root / ".synth.json"
    params = {"identities": identities, "poses_per_identity": poses, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == params:
        return False
    write_synthetic_tree(root, identities, poses, seed)
    marker.write_text(json.dumps(params))
    return True
