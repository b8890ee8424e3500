"""`posemaps`: the command-line face of the pose-maps stage (stages/posemaps.py)."""

from __future__ import annotations

import click

from stages.posemaps import run_posemaps


@click.command("posemaps")
@click.option(
    "--gaussian",
    "sigma",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SIGMA",
    help="Gaussian maps with this sigma in pixels instead of the legacy one-hot maps.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Rewrite every map (maps whose keypoints and sigma are unchanged are skipped).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write {train,test}_pose_maps/ here (default: dataset root).",
)
@click.pass_obj
def posemaps_command(obj, sigma, force, out) -> None:
    """Pose maps from the keypoints table (tables/keypoints.parquet of dataset.root).

    \b
    Writes {train,test}_pose_maps/<file_id>.npz: uint8 H x W x 18, 1 at [y, x, k] for each
    valid keypoint k, saved with numpy.savez_compressed under arr_0 like the published
    utility (np.load(f)['arr_0']). Files are written atomically by parallel Ray tasks;
    maps whose keypoints row and sigma are unchanged are skipped unless --force;
    maps of images gone from the table are removed. pose_maps.json beside the maps records
    the kind (one-hot, gaussian sigma), so generate picks the matching transport by itself.
    Rows with errors are
    left out and counted; keypoints outside the image are treated as missing and counted.
    Example: run_pipeline.py --set dataset.root=data/synthetic posemaps
    """
    cfg = obj.override_flags({"--gaussian": ("posemaps.gaussian_sigma", sigma)})
    result = run_posemaps(cfg, force=force, out=out)
    click.echo(result.summary())
