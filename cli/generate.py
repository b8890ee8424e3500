"""`generate`: the command-line face of the generate stage (stages/generate.py)."""

from __future__ import annotations

import click

from cli.options import ExistingOrURI
from pipeline.cluster.batch_stream import EXECUTORS
from stages.generate import run_generate


@click.command("generate")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    metavar="PATH|ID|DIR",
    help="A netG_<iter>.pth file, an iteration id (looked up in weights.checkpoint_dir), "
    "or a directory (every netG_<iter>.pth in it). Repeatable. Default: "
    "generate.checkpoints, else every netG_*.pth in <output.root>/train/checkpoints.",
)
@click.option(
    "--ngf",
    type=int,
    default=None,
    help="Generator width of the checkpoints (default generate.ngf).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default <output.root>/generated).",
)
@click.option(
    "--minmax/--no-minmax",
    default=None,
    help="Published save mode: the published test script's images (each image, real "
    "ones too, stretched to its own min..max, times 255 truncated, JPEG at PIL's "
    "defaults, quality 75), byte for byte on CPU fp32. Off (default "
    "generate.minmax): (x+1)/2 rounded, JPEG quality 95, NOT comparable with "
    "published numbers.",
)
@click.option(
    "--batch-size", type=int, default=None, help="Images per forward (default generate.batch_size)."
)
@click.option(
    "--pairs",
    "pairs_file",
    type=ExistingOrURI(dir_okay=False),
    default=None,
    help="Pairs table (.parquet) or legacy pairs CSV (default: the dataset's pairs table, "
    "else test_img_pairs.csv).",
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=None,
    help="Only the first N test pairs (quick runs).",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default=None,
    help="ray, in_process, or auto: this process for a run on one machine and device of at "
    "most generate.in_process_max_jobs images (default generate.executor).",
)
@click.option(
    "--dry-run",
    "-n",
    is_flag=True,
    help="Plan every test pair (100,000 at a time, so millions of pairs fit in memory) and "
    "say how many images would be made and how many earlier ones removed; write nothing.",
)
@click.pass_obj
def generate_command(
    obj, checkpoints, ngf, out, minmax, batch_size, pairs_file, limit, executor, dry_run
) -> None:
    """Generate every test pair with one or more checkpoints, both directions.

    \b
    Inputs: the test pairs (tables/pairs.parquet, split test, or test_img_pairs.csv), the
    images under dataset.root, pose maps test_pose_maps/<fid>.npz (rendered from
    tables/keypoints.parquet when missing), generator checkpoints.
    Outputs under OUT, as the published test script lays them out (n = 0-based index of the
    pair in the pairs table, counted per direction):
      real_images/real_B/<n>@<fidB>.jpg             target images, A->B
      real_images/real_A/<n>@<fidA>.jpg             target images, B->A
      fake_images/iter_<ckpt>/fake_B/<n>@<fidB>.jpg generated A->B (condition A, map pair A,B)
      fake_images/iter_<ckpt>/fake_A/<n>@<fidA>.jpg generated B->A
      manifest.parquet                              one row per generated image, status ok/error
      generation.json                               save mode (published / default), pose maps
    Save modes: --minmax writes the published test script's images (comparable with the
    published numbers; byte for byte on CPU with generate.dtype fp32); the default (x+1)/2
    mapping at JPEG quality 95 is NOT comparable with published numbers. One OUT holds one mode.
    A job with the same checkpoint and inputs as another (B->A of (b, a) is A->B of (a, b))
    runs once; its file is a hard link (or copy) of the other's, with its own manifest row.
    One-hot or gaussian pose maps are told apart by posemaps' pose_maps.json (or the maps'
    dtype); generate.sparse_maps true/false overrides the transport picked from that.
    A rerun skips images already ok in the manifest; a bad input becomes an error row, and
    a run whose every job fails writes the manifest, then exits with code 2.
    NetG's input is 256 x 176: an image of another size is scaled to height 256, then
    centre-cropped or padded with white to width 176, as the published API does; its pose
    map goes with it, and its real image is written at that size.
    Where it runs (--executor, generate.executor): "ray" streams the batches through Ray
    Data, NetG in an actor pool of generate.concurrency actors (default: one per GPU, else
    one per CPU node); "in_process" runs NetG in this process with threads loading ahead
    and writing behind, no Ray start-up; "auto" (default) takes this process when the run
    stays on one machine and device with at most generate.in_process_max_jobs images, else
    Ray. The files are the same either way. Autocast generate.dtype (auto = bf16 on GPU,
    fp32 on CPU), channels_last.
    Example: run_pipeline.py generate --checkpoint out/train/checkpoints --ngf 8 --out out/generated
    """
    cfg = obj.override_flags(
        {
            "--ngf": ("generate.ngf", ngf),
            "--minmax/--no-minmax": ("generate.minmax", minmax),
            "--batch-size": ("generate.batch_size", batch_size),
            "--executor": ("generate.executor", executor),
        }
    )
    result = run_generate(cfg, list(checkpoints) or None, out, pairs_file, limit, dry_run=dry_run)
    click.echo(result.summary())
