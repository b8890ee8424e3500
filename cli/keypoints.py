"""`keypoints`: the command-line face of the keypoints stage (stages/keypoints.py)."""

from __future__ import annotations

import click

from cli.options import TABLES_OUT, ExistingOrURI
from stages.keypoints import DEFAULT_GLOB, run_keypoints


@click.command("keypoints")
@click.option(
    "--estimator",
    type=click.Choice(["openpifpaf", "mediapipe"]),
    default=None,
    help="openpifpaf, or mediapipe (BlazePose, weights inside the installed wheel, CPU) "
    "(default: keypoints.estimator).",
)
@click.option(
    "--compare",
    type=ExistingOrURI(dir_okay=False),
    default=None,
    metavar="CSV",
    help="Score the keypoints against this reference legacy keypoints CSV (PCKh with the "
    "reference's head box, pixel error): tables/keypoints_qa.parquet "
    "(default: keypoints.compare).",
)
@click.option(
    "--model",
    "checkpoint",
    default=None,
    metavar="NAME|PATH",
    help="openpifpaf checkpoint name (looked up in weights.dir and the torch hub cache) "
    "or file (default: keypoints.checkpoint, shufflenetv2k16).",
)
@click.option(
    "--checkpoint",
    "old_checkpoint",
    default=None,
    hidden=True,
    help="Old name of --model (--checkpoint means a NetG file everywhere else).",
)
@click.option(
    "--annotations",
    type=ExistingOrURI(dir_okay=False),
    default=None,
    help="Import this legacy keypoints CSV instead of estimating "
    "(e.g. <root>/ground_truth_keypoints.csv of a synthetic tree).",
)
@click.option(
    "--glob",
    "pattern",
    default=None,
    metavar="PATTERN",
    help=f"Images to annotate as a glob under the dataset root (default: the image lists, "
    f"else {DEFAULT_GLOB}).",
)
@click.option("--force", is_flag=True, help="Recompute every image instead of resuming.")
@TABLES_OUT
@click.pass_obj
def keypoints_command(
    obj, estimator, compare, checkpoint, old_checkpoint, annotations, pattern, force, out
) -> None:
    """OpenPose-18 keypoints for every image of dataset.root.

    \b
    Reads the legacy image lists (train_img_list.csv, test_img_list.csv) or --glob.
    Runs openpifpaf or mediapipe's BlazePose on Ray Data: images decoded in tasks, the network
    in an actor pool (openpifpaf: one GPU per actor when there are GPUs). openpifpaf keeps the
    highest-scoring person; none found gives all -1 and n_valid 0. Unreadable,
    truncated, empty or non-image files become rows with `error` set.
    \b
    Writes:
      tables/keypoints.parquet                      one row per image, sorted by path
      train_img_keypoints.csv, test_img_keypoints.csv   legacy CSVs (error rows omitted)
      tables/keypoints_qa.parquet                   with --compare: per-image PCKh and pixel error
    A rerun resumes: images already done are skipped (unless --force) while their bytes are
    unchanged; changed and new images are estimated again.
    Example: run_pipeline.py keypoints --estimator mediapipe \\
             --compare data/synthetic/ground_truth_keypoints.csv
    """
    if old_checkpoint:
        click.echo("keypoints --checkpoint is now --model", err=True)
    cfg = obj.override_flags(
        {
            "--estimator": ("keypoints.estimator", estimator),
            "--model": ("keypoints.checkpoint", checkpoint or old_checkpoint),
        }
    )
    # Paths given on the command line are relative to the working directory, not to
    # dataset.root as the config's are, so they stay arguments.
    result = run_keypoints(
        cfg, annotations=annotations, force=force, out=out, pattern=pattern, compare=compare
    )
    click.echo(result.summary())
