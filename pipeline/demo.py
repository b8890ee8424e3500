"""The demo's preparation: the synthetic tree (kept across reruns) and the config that
points every stage at it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.synthetic import GROUND_TRUTH_CSV, write_synthetic_tree


def ensure_synthetic_tree(root: Path, identities: int, poses: int, seed: int,
                          echo: Callable[[str], None]) -> None:
    """Write the tree unless the same one is already there: rewriting identical files would
    change their mtimes and make every stage look out of date."""
    marker = root / ".synth.json"
    params = {"identities": identities, "poses_per_identity": poses, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == params:
        echo(f"[synth] {root} already holds this synthetic tree, kept")
        return
    table = write_synthetic_tree(root, identities, poses, seed)
    marker.write_text(json.dumps(params))
    echo(f"[synth] wrote {len(table)} synthetic images ({identities} identities) to {root}")


def estimator_unavailable(cfg: Config) -> str | None:
    """Why the configured keypoint estimator cannot run here (missing weights), or None."""
    from pipeline.estimators import resolve_estimator
    from pipeline.weights import WeightsError

    try:
        resolve_estimator(cfg.keypoints, cfg.weights.dir)
    except WeightsError as exc:
        return str(exc)
    return None


def prepare_demo(obj: Any, out: Path, identities: int | None, echo: Callable[[str], None]) -> Config:
    """`obj` is the CLI context (config path + overrides); returns the demo config."""
    data = out / "data"
    obj.overrides += [f"dataset.root={data}", f"output.root={out}"]
    if identities is not None:
        obj.overrides.append(f"synth.identities={identities}")
    cfg = obj.cfg
    sc = cfg.synth
    ensure_synthetic_tree(data, sc.identities, sc.poses_per_identity, sc.seed, echo)
    # The estimated keypoints are scored against the tree's ground truth (annotation QA).
    obj.overrides.append(f"keypoints.compare={data / GROUND_TRUTH_CSV}")
    obj._cfg = None
    cfg = obj.cfg
    if cfg.keypoints.annotations is None:
        reason = estimator_unavailable(cfg)
        if reason:
            echo(f"[keypoints] {cfg.keypoints.estimator} is not available here, so the demo imports the "
                 f"synthetic ground-truth keypoints ({GROUND_TRUTH_CSV}) instead of estimating "
                 f"them.\n            ({reason})")
            obj.overrides.append(f"keypoints.annotations={data / GROUND_TRUTH_CSV}")
            obj._cfg = None
            cfg = obj.cfg
    return cfg
