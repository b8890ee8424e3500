"""How generated images were saved (their save mode) and `generation.json`, the record the
generate stage writes beside its manifest so that evaluate and report can say which mode
made the images they score."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from pipeline.core import storage
from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.errors import DataError
from pipeline.core.object_path import data_path

if TYPE_CHECKING:
    from pipeline.core.config import StorageConfig

GENERATION_META = "generation.json"
PUBLISHED, DEFAULT, UNKNOWN = "published", "default", "unknown"
SAVE_MODES = {
    PUBLISHED: "the published test script's images (per-image min-max stretch, x255 truncated, "
    "JPEG at PIL's defaults: quality 75, 4:2:0): comparable with published numbers",
    DEFAULT: "(x+1)/2 rounded, JPEG quality 95: NOT comparable with published numbers",
    UNKNOWN: f"unknown: no {GENERATION_META} records it (images not written by this pipeline's "
    "generate stage, or by an older version of it)",
}


def save_mode(minmax: bool) -> str:
    return PUBLISHED if minmax else DEFAULT


def read_generation_meta(
    gen_root: str | os.PathLike, storage_cfg: StorageConfig | None = None
) -> dict:
    """The generation directory's record (a local folder or an s3:// prefix); {} when it
    has none."""
    path = storage.join(gen_root, GENERATION_META)
    try:
        return json.loads(storage.read_bytes(path, storage_cfg))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it and rerun generate") from exc


def checkpoint_save_modes(
    gen_root: str | os.PathLike, checkpoints: list[str], storage_cfg: StorageConfig | None
) -> dict[str, str]:
    """Save mode of each checkpoint's images; `unknown` where the record names none."""
    recorded = read_generation_meta(gen_root, storage_cfg).get("checkpoints", {})
    return {c: recorded.get(c, UNKNOWN) for c in checkpoints}


def record_generation(
    gen_root: str | os.PathLike, mode: str, checkpoints: list[str], pose_maps: str
) -> None:
    """Add `checkpoints` in `mode` to the directory's generation.json. The real images are
    shared by all checkpoints of a directory, so a directory holds one mode: a different
    one raises DataError before anything is written."""
    meta = read_generation_meta(gen_root)
    held = meta.get("save_mode")
    if held is not None and held != mode:
        flag = "--minmax" if held == PUBLISHED else "--no-minmax"
        raise DataError(
            f"{gen_root} holds images saved in {held} mode ({SAVE_MODES[held]}); this "
            f"run would add {mode} mode images beside them. Rerun with {flag}, or pass "
            "another --out for this mode."
        )
    updated = {
        **meta,
        "save_mode": mode,
        "save_mode_description": SAVE_MODES[mode],
        "pose_maps": pose_maps,
        "checkpoints": {**meta.get("checkpoints", {}), **dict.fromkeys(checkpoints, mode)},
    }
    if updated != meta:  # an unchanged record keeps its mtime, like every up-to-date output
        meta = data_path(gen_root) / GENERATION_META
        write_bytes_atomic(meta, json.dumps(updated, indent=2).encode())


def mixed_modes_message(modes: dict[str, str]) -> str | None:
    """None when every checkpoint's images share one save mode; else what is mixed."""
    if len(set(modes.values())) <= 1:
        return None
    by_mode: dict[str, list[str]] = {}
    for ckpt, mode in modes.items():
        by_mode.setdefault(mode, []).append(ckpt)
    listed = "; ".join(f"{mode}: {', '.join(ckpts)}" for mode, ckpts in sorted(by_mode.items()))
    return (
        f"checkpoints whose images were saved in different modes are in one table ({listed}); "
        "their numbers are not comparable with each other"
    )


MIXED = "mixed"


def overall_save_mode(modes: dict[str, str]) -> str:
    """The one mode of all checkpoints' images, `mixed` when they differ."""
    values = set(modes.values())
    if not values:
        return UNKNOWN
    return values.pop() if len(values) == 1 else MIXED


def save_mode_text(modes: dict[str, str]) -> str:
    """One line for report headers and stage notes: the mode and what it means."""
    mode = overall_save_mode(modes)
    if mode == MIXED:
        return "MIXED save modes: " + (mixed_modes_message(modes) or "")
    return f"{mode} save mode: {SAVE_MODES[mode]}"
