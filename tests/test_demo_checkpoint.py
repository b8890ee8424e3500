"""The shipped demo checkpoint (weights/demo/) transfers pose: on synthetic identities it
never saw, BlazePose finds the target's pose in its generated figures nearly as well as in
the real targets, and its images beat copying the condition on SSIM (issue 24)."""

from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.config import load_config
from pipeline.core.weights import checkpoint_id
from pipeline.generator.demo_checkpoint import demo_generator, recipe, shipped_files
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree
from stages.dag import RunPlan, run_dag

REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_pair_is_the_one_its_recipe_made():
    files = shipped_files()
    assert sorted(f.path.name[:5] for f in files) == ["netD_", "netG_"]
    assert all(f.intact for f in files), [(f.path, f.sha256, f.recorded) for f in files]
    made = recipe()
    assert made["command"].startswith("scripts/train_demo_checkpoint.py")
    assert made["train_seconds"] > 0 and made["iterations"] >= 1000
    # Trained on other identities than the demo draws (seed 0) and this test (seed 3).
    assert made["synthetic_tree"]["seed"] not in (0, 3)


@pytest.fixture(scope="module")
def shipped_scores(tmp_path_factory, ray_session):
    """The shipped checkpoint generated and scored (SSIM, PCKh) on 16 unseen identities, the
    demo's way: BlazePose keypoints, scored against the synthetic ground truth."""
    root = tmp_path_factory.mktemp("shipped")
    data, out = root / "data", root / "out"
    write_synthetic_tree(data, identities=16, poses_per_identity=6, seed=3)
    shipped = demo_generator()
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"dataset.root={data}",
            f"output.root={out}",
            f"keypoints.compare={GROUND_TRUTH_CSV}",
            f"generate.checkpoints={shipped}",
            "evaluate.metrics=ssim,pckh",
            "ray.num_cpus=2",
        ],
    )
    run_dag(cfg, RunPlan(["keypoints", "posemaps", "pairs", "generate", "evaluate"]))
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet")
    assert (summary["status"] == "ok").all()
    return summary.set_index(["checkpoint", "direction", "metric"]), checkpoint_id(shipped)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["AB", "BA"])
def test_the_shipped_checkpoint_beats_copying_the_condition(shipped_scores, direction):
    rows, ckpt = shipped_scores
    mean = rows["mean"]
    # The real targets' PCKh is the estimator's against the ground truth, not 1.
    assert rows.loc[("real", direction, "pckh"), "reason"].startswith("estimated, against")
    assert 0.5 < mean[("real", direction, "pckh")] < 1
    assert mean[(ckpt, direction, "ssim")] > mean[("copy", direction, "ssim")], mean
    # The generated figures take the target pose: well above the condition's own pose.
    assert mean[(ckpt, direction, "pckh")] > 2 * mean[("copy", direction, "pckh")], mean


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 24's goal, not reached yet: the shipped checkpoint (4,000 CPU iterations, "
    "generator averaged over 2,000 to 4,000) reaches about 0.79 of the real targets' PCKh "
    "here and 0.66 in the demo; training longer on CPU without the perceptual loss did not "
    "raise it (README); when a checkpoint reaches it, this test passes and must lose its mark",
)
@pytest.mark.parametrize("direction", ["AB", "BA"])
def test_the_shipped_checkpoint_reaches_85_percent_of_the_real_targets_pckh(
    shipped_scores, direction
):
    rows, ckpt = shipped_scores
    mean = rows["mean"]
    assert mean[(ckpt, direction, "pckh")] >= 0.85 * mean[("real", direction, "pckh")], mean
