"""Shared fixtures: reference files, a small synthetic tree, one local Ray session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.exists():
        pytest.fail(f"reference files not found at {REFERENCE} (expected ../shared/reference)")
    return REFERENCE


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset shared read-only by the whole session."""
    from pipeline.synthetic import write_synthetic_tree

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_tree(root, identities=8, poses_per_identity=4, seed=3)
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the suite (starting Ray takes seconds; share it)."""
    import ray

    from pipeline.config import RayConfig
    from pipeline.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def annotated_root(synth_root, tmp_path_factory) -> Path:
    """The small synthetic tree plus its annotations as the stages lay them out: the
    keypoints table (ground truth imported), pose maps and the pairs table. Read-only."""
    import shutil

    import pandas as pd

    from pipeline.synthetic import GROUND_TRUTH_CSV
    from pipeline.tables import (
        KEYPOINTS_SCHEMA, PAIRS_SCHEMA, SPLITS, DatasetLayout, read_image_list, write_table,
    )  # fmt: skip
    from stages.keypoints import keypoints_from_csv
    from stages.pairs import make_pairs
    from stages.posemaps import write_posemap

    root = tmp_path_factory.mktemp("annotated") / "data"
    shutil.copytree(synth_root, root)
    layout = DatasetLayout(root)
    splits = {s: read_image_list(layout.image_list(s), root) for s in SPLITS}
    images = pd.DataFrame([(p, s) for s, ps in splits.items() for p in ps], columns=["path", "split"])
    kp = keypoints_from_csv(root / GROUND_TRUTH_CSV, images)
    write_table(kp, layout.keypoints_table, KEYPOINTS_SCHEMA)
    for r in kp.itertuples():
        write_posemap(layout.posemap(r.split, r.file_id), r.x, r.y, r.img_h, r.img_w)
    pairs, _ = make_pairs(kp, splits, min_valid=8)
    write_table(pairs, layout.pairs_table, PAIRS_SCHEMA)
    return root
