"""`transfer`: the command-line face of the inference API (PoseTransfer of
pipeline/generator/inference_api.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("transfer")
@click.option(
    "--condition",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Image of the person to re-pose (any size).",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Image whose pose is the target (keypoints estimated with --estimator).",
)
@click.option(
    "--keypoints",
    "keypoints_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Target keypoints file instead of --reference (format below).",
)
@click.option(
    "--condition-keypoints",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Keypoints of the condition image (default: estimated with --estimator).",
)
@click.option(
    "--estimator",
    type=click.Choice(["openpifpaf", "mediapipe"]),
    default=None,
    help="Keypoint estimator for images without keypoints (default: keypoints.estimator).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output image path.")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Generator checkpoint netG_<iter>.pth.",
)
@click.option(
    "--ngf", type=int, default=64, show_default=True, help="Generator width of the checkpoint."
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available).")
@click.pass_obj
def transfer_command(
    obj,
    condition,
    reference,
    keypoints_file,
    condition_keypoints,
    estimator,
    out,
    checkpoint,
    ngf,
    device,
) -> None:
    """Re-pose the person of one image (condition) in the pose of a reference image.

    The target pose comes from a reference image or from a keypoints file. The output has
    the condition's size.

    \b
    Keypoints file: JSON {"x": [18 ints], "y": [18 ints], "width": W, "height": H} in
    OpenPose-18 order, -1 for missing, pixel coordinates of an image of size W x H
    (width/height optional: default the condition's size); or a legacy keypoints CSV
    (file_id,img_h,img_w,p0_x,p0_y,...,p17_y), first row used.
    Example: run_pipeline.py transfer --condition A.jpg --reference B.jpg --out C.jpg \\
             --checkpoint out/train/checkpoints/netG_600.pth --ngf 8
    """
    from PIL import Image

    from pipeline.core.atomic_io import atomic_path
    from pipeline.generator.inference_api import PoseTransfer, read_pose_file

    if (reference is None) == (keypoints_file is None):
        raise click.UsageError("give exactly one of --reference IMAGE or --keypoints FILE")
    fmt = Image.registered_extensions().get(Path(out).suffix.lower())
    if fmt is None:
        raise click.BadParameter(
            f"{out}: unknown image extension (use .jpg or .png)", param_hint="--out"
        )
    target = reference if reference is not None else read_pose_file(keypoints_file)
    cond_pose = read_pose_file(condition_keypoints) if condition_keypoints else None
    kc = obj.cfg.keypoints
    pt = PoseTransfer(
        checkpoint,
        device=device,
        ngf=ngf,
        estimator_checkpoint=kc.checkpoint,
        estimator=estimator or kc.estimator,
        weights_dir=obj.cfg.weights.dir,
    )
    image = pt.transfer(condition, target, cond_pose)
    with atomic_path(out) as tmp:
        image.save(tmp, format=fmt)
    click.echo(f"transfer: {image.size[0]}x{image.size[1]} image written to {out}")
