"""Inference API: load a NetG checkpoint and transfer a person to a new pose, plus the
batched uint8-in / uint8-out forward that the generate stage's actors share with it."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.cluster.runtime import best_device
from pipeline.core.errors import DataError
from pipeline.core.imaging import (
    CANVAS,
    keypoints_to_canvas,
    load_rgb,
    resize_pad_256,
    to_uint8,
    unpad_256,
)
from pipeline.core.legacy_csv import read_keypoints_csv
from pipeline.core.weights import load_into
from pipeline.generator.networks import NetG
from pipeline.pose.posemap import render_map
from pipeline.pose.skeleton import N_KEYPOINTS

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast_dtype(name: str, device: str) -> torch.dtype | None:
    """`auto` is bf16 on a GPU and plain fp32 on CPU (CPU autocast is slower there)."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else None
    return AUTOCAST_DTYPES[name]


def load_generator(
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    ngf: int,
    device: str,
    channels_last: bool = True,
) -> NetG:
    """NetG in eval mode on `device` from a checkpoint file or an already loaded state
    dict; a file that does not fit raises WeightsError naming it."""
    net = NetG(ngf=ngf)
    if isinstance(weights, Mapping):
        net.load_state_dict(weights)
    else:
        load_into(net, weights)
    net = net.eval().to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def check_checkpoint(path: str | os.PathLike, ngf: int) -> None:
    """Raise WeightsError naming `path` when it is not a NetG(ngf) state dict. The network
    is built on the meta device: no memory, no initialisation time."""
    with torch.device("meta"):
        net = NetG(ngf=ngf)
    with warnings.catch_warnings():
        # Copying into meta tensors is a no-op that torch warns about; only the checks matter.
        warnings.simplefilter("ignore", UserWarning)
        load_into(net, path)


def generate_uint8(
    net: NetG,
    images: np.ndarray,
    maps: np.ndarray,
    *,
    minmax: bool = False,
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> np.ndarray:
    """One NetG forward on a batch: condition images (N, H, W, 3) uint8 and map pairs
    concat(map_condition, map_target) (N, H, W, 36) in {0, 1} -> (N, H, W, 3) uint8.

    NHWC arrays viewed as NCHW are already channels_last in memory, so no copy is made for
    that layout. The output mapping is imaging.to_uint8 ((x+1)/2, or with `minmax` the
    published test script's conversion, whose input scaling is then the published one too).
    """
    device = next(net.parameters()).device
    image = _nchw_view(images).to(device)
    pose = _nchw_view(maps).to(device)
    if not channels_last:
        image, pose = image.contiguous(), pose.contiguous()
    if minmax:
        # The published loader's ToTensor + Normalize: equal to x / 127.5 - 1 on paper, not to
        # the last bit, which the published save's truncation can turn into a grey level.
        image = image.float().div_(255).sub_(0.5).div_(0.5)
    else:
        image = image.float().div_(127.5).sub_(1.0)
    pose = pose.float()
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        out = net(image, pose)
    return to_uint8(out, minmax=minmax)


def _nchw_view(batch: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) array as an (N, C, H, W) tensor without a copy. Ray hands batches over
    read-only; nothing writes into this view (the float conversion copies), so torch's
    warning about non-writable arrays does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class Pose:
    """18 OpenPose keypoints as pixel `x`, `y` (-1 = missing) of an image of size
    `size` = (width, height); size None means "the condition image's size"."""

    x: np.ndarray
    y: np.ndarray
    size: tuple[int, int] | None = None

    def __post_init__(self):
        for name in ("x", "y"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (N_KEYPOINTS,):
                raise DataError(
                    f"pose {name} must hold {N_KEYPOINTS} values (OpenPose-18 order), "
                    f"got shape {arr.shape}"
                )
            object.__setattr__(self, name, np.round(arr).astype(np.int32))


def read_pose_file(path: str | os.PathLike) -> Pose:
    """A keypoints file for `transfer`: JSON `{"x": [18 ints], "y": [18 ints]}` with
    optional `"width"`, `"height"` of the image they belong to, or a legacy keypoints CSV
    (`file_id,img_h,img_w,p0_x,p0_y,...`) whose first row is used."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"keypoints file not found: {path}")
    if path.suffix.lower() == ".csv":
        row = read_keypoints_csv(path).iloc[0]
        return Pose(row["x"], row["y"], (int(row["img_w"]), int(row["img_h"])))
    try:
        data = json.loads(path.read_text())
        size = (int(data["width"]), int(data["height"])) if "width" in data else None
        return Pose(np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64), size)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f'{path}: expected JSON {{"x": [18 numbers], "y": [18 numbers]}} '
            f'(optional "width", "height") or a legacy keypoints CSV: {exc}'
        ) from exc


ImageLike = Image.Image | str | os.PathLike


def _as_image(image: ImageLike | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    return load_rgb(image)


def _as_pose(pose: Pose | tuple | pd.Series) -> Pose:
    return pose if isinstance(pose, Pose) else Pose(*pose)


class PoseTransfer:
    """Pose transfer with one generator checkpoint.

    >>> pt = PoseTransfer("out/train/checkpoints/netG_600.pth", ngf=8)
    >>> pt.transfer("condition.jpg", "reference.jpg").save("generated.jpg")

    Images of any size are scaled to height 256, centre-cropped to width 176 and padded
    to 256 x 256 (the published API's preprocessing); the result is mapped back to the
    condition's size. Keypoints not given are estimated with `estimator` (openpifpaf, which
    needs its weights, or mediapipe, which ships them).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
        device: str | None = None,
        ngf: int = 64,
        estimator_checkpoint: str = "shufflenetv2k16",
        estimator: str = "openpifpaf",
        weights_dir: str | os.PathLike | None = None,
    ):
        self.device = device or best_device()
        self.net = load_generator(checkpoint, ngf, self.device)
        self.estimator_checkpoint = estimator_checkpoint
        self.estimator_name = estimator
        self.weights_dir = weights_dir
        self._estimator = None

    def estimate_pose(self, image: ImageLike | np.ndarray) -> Pose:
        """Keypoints of the person the estimator finds (all -1 when none)."""
        from pipeline.core.config import KeypointsConfig
        from pipeline.pose.estimator_factory import build_estimator

        if self._estimator is None:
            kc = KeypointsConfig(
                estimator=self.estimator_name, checkpoint=self.estimator_checkpoint
            )
            self._estimator = build_estimator(kc, self.weights_dir, device=self.device)
        im = _as_image(image)
        x, y, _ = self._estimator.predict([np.asarray(im)])[0]
        return Pose(x, y, im.size)

    def transfer(
        self,
        condition: ImageLike | np.ndarray,
        target: ImageLike | np.ndarray | Pose | tuple,
        condition_pose: Pose | tuple | None = None,
    ) -> Image.Image:
        """The condition person in the target pose, as a PIL image of the condition's size.

        `target`: a reference image (its pose is estimated) or the target keypoints
        (a Pose, or an (x, y) pair in the condition image's pixel coordinates).
        `condition_pose`: the condition's keypoints; estimated when None.
        """
        cond = _as_image(condition)
        if isinstance(target, (Image.Image, np.ndarray, str, os.PathLike)):
            target = self.estimate_pose(target)
        target = _as_pose(target)
        cond_pose = self.estimate_pose(cond) if condition_pose is None else _as_pose(condition_pose)
        canvas, box = resize_pad_256(cond)
        maps = [self._canvas_map(p, cond.size) for p in (cond_pose, target)]
        pair = np.concatenate(maps, axis=2)[None]
        out = generate_uint8(self.net, np.asarray(canvas)[None], pair)[0]
        return unpad_256(Image.fromarray(out), box)

    @staticmethod
    def _canvas_map(pose: Pose, condition_size: tuple[int, int]) -> np.ndarray:
        """The pose's one-hot map on the 256 canvas, placed as its own image would be."""
        # The pad box depends only on the image size, so a blank image of that size gives it.
        _, box = resize_pad_256(Image.new("RGB", pose.size or condition_size))
        cx, cy = keypoints_to_canvas(pose.x, pose.y, box)
        return render_map(cx, cy, CANVAS, CANVAS)


# The published API's checkpoint, looked up (never downloaded) by Pose2Pose(pretrained=True).
PUBLISHED_CHECKPOINT = "pose_transfer_coco_keypoints_deepfashion_netG_iter_260500.pth"


class Pose2Pose(PoseTransfer):
    """The published inference API's names over PoseTransfer, so code written against it
    runs unchanged:

    >>> p2p = Pose2Pose(checkpoint="netG_260500.pth")   # or Pose2Pose(pretrained=True)
    >>> generated = p2p.transfer_as(condition, reference)

    `pretrained=True` looks for the published file name in `weights_dir` (weights.dir) and
    the torch hub cache; nothing is downloaded, so `ignore_cache` changes nothing.
    `pretrained=False` without a checkpoint builds an untrained NetG, as the published API
    does (its output is noise). The generator's width comes from the weights; poses are
    estimated with openpifpaf when its weights are found, else with BlazePose.
    """

    def __init__(
        self,
        pretrained: bool = False,
        ignore_cache: bool = False,
        checkpoint: str | os.PathLike | None = None,
        device: str | None = None,
        ngf: int | None = None,
        weights_dir: str | os.PathLike | None = None,
        estimator: str = "auto",
    ):
        from pipeline.core.weights import load_state_dict

        if estimator == "auto":
            estimator = self._available_estimator(weights_dir)

        if checkpoint is None and pretrained:
            checkpoint = self._published_checkpoint(weights_dir)
        if checkpoint is None:
            with torch.random.fork_rng():  # the caller's random stream stays as it was
                torch.manual_seed(0)
                state = NetG(ngf=ngf or 64).state_dict()
        else:
            state = load_state_dict(checkpoint)
        # The published API has no ngf argument: the width is read off the weights.
        ngf = ngf or int(state["in1_conv1.0.weight"].shape[0])
        self.ignore_cache = ignore_cache
        super().__init__(
            state, device=device, ngf=ngf, estimator=estimator, weights_dir=weights_dir
        )

    @staticmethod
    def _available_estimator(weights_dir: str | os.PathLike | None) -> str:
        """openpifpaf, as the published API, when its weights are here; else BlazePose,
        whose weights ship inside the mediapipe wheel."""
        from pipeline.core.config import KeypointsConfig
        from pipeline.core.weights import WeightsError
        from pipeline.pose.estimator_factory import resolve_estimator

        try:
            resolve_estimator(KeypointsConfig(estimator="openpifpaf"), weights_dir)
        except WeightsError:
            return "mediapipe"
        return "openpifpaf"

    @staticmethod
    def _published_checkpoint(weights_dir: str | os.PathLike | None) -> Path:
        from pipeline.core.weights import WeightsError, find_weight, weight_search_dirs

        found = find_weight(PUBLISHED_CHECKPOINT, weights_dir)
        if found is None:
            where = ", ".join(str(d) for d in weight_search_dirs(weights_dir))
            raise WeightsError(
                f"Pose2Pose(pretrained=True): {PUBLISHED_CHECKPOINT} not found in {where}. "
                "Nothing is downloaded: put the published file in one of these folders "
                "(or pass weights_dir=), or pass checkpoint=PATH."
            )
        return found

    def transfer_as(
        self, condition: ImageLike | np.ndarray, reference: ImageLike | np.ndarray
    ) -> Image.Image:
        """The condition person in the reference image's pose (the published method name)."""
        return self.transfer(condition, reference)
