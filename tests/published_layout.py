"""Test helper: a small generation directory in the published layout, built from the
synthetic tree (real = the synthetic images, fake = perturbed copies whose noise falls as
the checkpoint id grows), since evaluate must work on any such directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.imaging import encode_jpeg, load_rgb
from pipeline.core.paths import file_id


def perturbed(image: np.ndarray, noise: float, shift: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.roll(image.astype(np.float64), shift, axis=1) + rng.normal(0, noise, image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_published_layout(
    synth_root: Path, out: Path, checkpoints: dict[str, float], max_pairs: int | None = None
) -> int:
    """Pairs (A, B) = consecutive images of one identity folder; `checkpoints` maps a
    checkpoint id to its noise level. Returns the number of pairs."""
    folders = sorted({p.parent for p in Path(synth_root).glob("img/**/*.jpg")})
    pairs = []
    for folder in folders:
        imgs = sorted(folder.glob("*.jpg"))
        pairs += list(zip(imgs[:-1], imgs[1:], strict=True))
    pairs = pairs[:max_pairs] if max_pairs else pairs
    for n, (a, b) in enumerate(pairs):
        ims = {}
        for side, path in (("A", a), ("B", b)):
            name = f"{n}@{file_id(str(path.relative_to(synth_root)))}.jpg"
            ims[side] = (name, np.asarray(load_rgb(path)))
            write_bytes_atomic(
                out / "real_images" / f"real_{side}" / name, encode_jpeg(ims[side][1])
            )
        for k, (ckpt, noise) in enumerate(checkpoints.items()):
            for side, (name, image) in ims.items():
                fake = perturbed(image, noise, shift=2, seed=n * 7 + k)
                write_bytes_atomic(
                    out / "fake_images" / f"iter_{ckpt}" / f"fake_{side}" / name, encode_jpeg(fake)
                )
    return len(pairs)


def corrupt(path: Path) -> None:
    """Replace an image by a truncated file (a bad row, not a crash)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
