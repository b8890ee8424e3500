"""`train`: the command-line face of the train stage (stages/train.py)."""

from __future__ import annotations

import click

from cli.options import ExistingOrURI
from pipeline.cluster.stage_result import run_stage
from stages.train import run_train


@click.command("train")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default: <output.root>/train).",
)
@click.option("--ngf", type=int, default=None, help="Generator width (default: train.ngf).")
@click.option(
    "--iterations", type=int, default=None, help="Last iteration (default: train.iterations)."
)
@click.option(
    "--ckpt-every", type=int, default=None, help="Checkpoint period (default: train.ckpt_every)."
)
@click.option(
    "--num-workers", type=int, default=None, help="Ray Train workers (default: train.num_workers)."
)
@click.option("--resume", is_flag=True, help="Continue from the latest saved state under OUT.")
@click.option(
    "--init-from",
    type=ExistingOrURI(),
    default=None,
    metavar="DIR_OR_FILE",
    help="Start from a netG_<iter>.pth / netD_<iter>.pth pair (the official 257500 / "
    "260500 ones, or another run's): a file of the pair, or a directory (its "
    "highest complete pair). Numbering continues from <iter>; Adam starts fresh, "
    "since the files hold no optimiser state.",
)
@click.option(
    "--init-iter",
    type=click.IntRange(0),
    default=None,
    help="The iteration --init-from's weights count as (default: from the file name).",
)
@click.pass_obj
def train_command(
    obj, out, ngf, iterations, ckpt_every, num_workers, resume, init_from, init_iter
) -> None:
    """Train NetG/NetD on the train pairs of dataset.root with Ray Train (DDP).

    \b
    Reads: <dataset.root>/tables/pairs.parquet (split == train), the images, the pose maps
           (<split>_pose_maps/<file_id>.npz, else rendered from tables/keypoints.parquet).
    Writes under OUT (default <output.root>/train):
      checkpoints/netG_<iter>.pth, netD_<iter>.pth   plain state dicts, official names
      log.parquet                                    losses per iteration
      samples/iter_<iter>.png                        condition | target | generated
      run_meta.json                                  config, perceptual term used or not,
                                                     --init-from files with their sha256
      ray/                                           Ray Train runs: resumable states
    Example: run_pipeline.py --config configs/demo.yaml train --iterations 600 --num-workers 2
    """
    if init_iter is not None and init_from is None:
        raise click.UsageError("--init-iter needs --init-from")
    cfg = obj.override_flags(
        {
            "--ngf": ("train.ngf", ngf),
            "--iterations": ("train.iterations", iterations),
            "--ckpt-every": ("train.ckpt_every", ckpt_every),
            "--num-workers": ("train.num_workers", num_workers),
        }
    )
    result = run_stage(
        run_train,
        cfg,
        out=out,
        resume=resume,
        init_from=init_from,
        init_iter=init_iter,
    )
    click.echo(result.summary())
