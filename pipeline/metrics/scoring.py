"""Scoring batches of generated images, run inside Ray tasks (pixel metrics) and actors
(network metrics): load the real and generated images of each row, score what loads, and
keep a row with the reason for what does not."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.core.imaging import ImageError, read_rgb_many
from pipeline.metrics.registry import COPY, REAL

if TYPE_CHECKING:
    from pipeline.core.config import StorageConfig


def real_images(pairs: pd.DataFrame) -> pd.DataFrame:
    """The real target images per direction (scored once, not per checkpoint)."""
    ok = pairs[pairs["error"].isna()].drop_duplicates(["direction", "name"])
    real = ok[["direction", "name", "real_path"]].assign(checkpoint=REAL, fake_path=None)
    if "inputs" in ok:  # the real file's half of the pair's digest
        real["inputs"] = ok["inputs"].str.split("|").str[0] + "|none"
    return real


def condition_copies(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per direction and target, the condition image standing in for the generated one
    (scored once, not per checkpoint): the baseline of copying the input."""
    ok = pairs[pairs["error"].isna() & pairs["condition_path"].notna()]
    ok = ok.drop_duplicates(["direction", "name"])
    return (
        ok[["direction", "name", "real_path", "condition_path"]]
        .rename(columns={"condition_path": "fake_path"})
        .assign(checkpoint=COPY, condition_path=None, error=None)
    )


def load_images(
    gen_root: str, rels: list[str], storage_cfg: StorageConfig | None
) -> dict[str, np.ndarray | ImageError]:
    """Each distinct one of `rels` under the generation root (a local folder or an s3://
    URI, always a string) as an array, or the ImageError it raised; read concurrently on
    object storage (imaging.read_rgb_many)."""
    distinct = list(dict.fromkeys(rels))
    loaded = read_rgb_many(gen_root, distinct, storage_cfg)
    # Writable copies: torch refuses read-only arrays.
    return {
        rel: im if isinstance(im, ImageError) else np.array(im)
        for rel, im in zip(distinct, loaded, strict=True)
    }


def _image(loaded: dict[str, np.ndarray | ImageError], rel: str) -> np.ndarray:
    if isinstance(found := loaded[rel], ImageError):
        raise found
    return found


def _load_pairs(
    gen_root: str, rows: list[dict], storage_cfg: StorageConfig | None
) -> tuple[list, list, dict[int, str]]:
    """Real and fake images of `rows`; failures are returned by row position."""
    real, fake, errors = [], [], {}
    rels = [r[side] for r in rows for side in ("real_path", "fake_path")]
    loaded = load_images(gen_root, rels, storage_cfg)
    for i, r in enumerate(rows):
        try:
            a = _image(loaded, r["real_path"])
            b = _image(loaded, r["fake_path"])
            if a.shape != b.shape:
                raise ImageError(
                    f"real {a.shape[1]}x{a.shape[0]} and generated "
                    f"{b.shape[1]}x{b.shape[0]} differ in size"
                )
            real.append(a)
            fake.append(b)
        except ImageError as exc:
            errors[i] = f"{r['fake_path']}: {exc}"
    return real, fake, errors


def _with_errors(rows: list[dict], errors: dict[int, str], scored: list[dict]) -> list[dict]:
    """Merge scores of the loadable rows with error rows, in the order of `rows`."""
    it = iter(scored)
    out = []
    for i, r in enumerate(rows):
        out.append({**r, "error": errors[i]} if i in errors else {**r, **next(it)})
    return out


def score_pixel_batch(
    gen_root: str,
    rows: list[dict],
    metrics: list[str],
    storage_cfg: StorageConfig | None,
) -> dict[str, list[dict]]:
    """Pixel metrics (SSIM, PSNR) for a batch of pairs, each pair loaded once -> metric ->
    rows with `value` or `error`."""
    from pipeline.metrics.registry import build_scorer

    real, fake, errors = _load_pairs(gen_root, rows, storage_cfg)
    return {m: _with_errors(rows, errors, build_scorer(m, None)(real, fake)) for m in metrics}


def score_network_batch(
    scorer: Callable,
    gen_root: str,
    rows: list[dict],
    kind: str,
    storage_cfg: StorageConfig | None,
) -> list[dict]:
    """Load a batch and score it: pairs for pair metrics, single images for image metrics
    (the fake image, or the real one for rows of the real set)."""
    if kind == "pair":
        real, fake, errors = _load_pairs(gen_root, rows, storage_cfg)
        return _with_errors(rows, errors, scorer(real, fake) if real else [])
    images, errors = [], {}
    rels = [r["fake_path"] if r["fake_path"] else r["real_path"] for r in rows]
    loaded = load_images(gen_root, rels, storage_cfg)
    for i, rel in enumerate(rels):
        try:
            images.append(_image(loaded, rel))
        except ImageError as exc:
            errors[i] = f"{rel}: {exc}"
    return _with_errors(rows, errors, scorer(images, None) if images else [])
