"""`pairs`: the command-line face of the pairs stage (stages/pairs.py)."""

from __future__ import annotations

import click

from cli.options import TABLES_OUT
from stages.pairs import run_pairs


@click.command("pairs")
@click.option(
    "--min-valid",
    type=click.IntRange(0, 18),
    default=None,
    help="Valid keypoints both images need (default: pairs.min_valid_keypoints).",
)
@click.option(
    "--max-pairs-per-identity",
    type=click.IntRange(1),
    default=None,
    help="Keep a seeded, deterministic sample of at most N pairs per identity.",
)
@TABLES_OUT
@click.pass_obj
def pairs_command(obj, min_valid, max_pairs_per_identity, out) -> None:
    """Train/test pairs from the keypoints table and the image lists of dataset.root.

    \b
    Pairs are ordered pairs (A, B) of distinct images in the same identity folder
    (img/MEN/Denim/id_00000080/...), both with at least --min-valid valid keypoints.
    Writes:
      tables/pairs.parquet                      imgA, imgB, fidA, fidB, group, split
      train_img_pairs.csv, test_img_pairs.csv   legacy CSVs (imgA,imgB)
    Prints images, excluded images by reason and pairs per split.
    Example: run_pipeline.py --set dataset.root=data/synthetic pairs --min-valid 8
    """
    cfg = obj.override_flags(
        {
            "--min-valid": ("pairs.min_valid_keypoints", min_valid),
            "--max-pairs-per-identity": ("pairs.max_pairs_per_identity", max_pairs_per_identity),
        }
    )
    result = run_pairs(cfg, out=out)
    click.echo(result.summary())
