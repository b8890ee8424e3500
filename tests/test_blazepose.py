"""BlazePose (mediapipe) estimator: the landmark-name table, the 33 -> OpenPose-18 mapping
with visibility and frame checks, and landmarks on real photographs measured by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.pose.blazepose import (
    N_LANDMARKS,
    OP18_FROM_BLAZEPOSE,
    blazepose_to_op18,
    landmark_indices,
    model_files,
)
from pipeline.pose.estimator_factory import build_estimator, resolve_estimator
from pipeline.pose.skeleton import NECK, OP18_NAMES

OP = {name: i for i, name in enumerate(OP18_NAMES)}


@pytest.fixture(scope="module")
def estimator():
    return build_estimator("mediapipe")


def photo(reference: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(reference / "api-test" / name).convert("RGB"))


def test_table_maps_every_openpose18_keypoint_but_the_neck_by_enum_name():
    enum = landmark_indices()
    assert len(enum) == N_LANDMARKS and set(OP18_FROM_BLAZEPOSE) <= set(enum)
    assert sorted(OP18_FROM_BLAZEPOSE.values()) == [i for i in range(18) if i != NECK]
    for name, op_idx in OP18_FROM_BLAZEPOSE.items():
        assert OP18_NAMES[op_idx] == name.lower()  # person's left is OpenPose's left


def landmarks(h: int = 256, w: int = 176) -> tuple[np.ndarray, np.ndarray]:
    """Landmark i at a distinct pixel inside an h x w image, all visible."""
    i = np.arange(N_LANDMARKS, dtype=np.float64)
    return np.stack([5 + 4.6 * i, 3 + 7.1 * i], axis=1), np.full(N_LANDMARKS, 0.9)


def test_every_openpose18_index_gets_its_landmark_and_the_neck_is_synthesised():
    xy, vis = landmarks()
    enum = landmark_indices()
    # Shoulders of unlike visibility: the neck takes the smaller one, on either side.
    for right, left in ((0.95, 0.7), (0.6, 0.8)):
        vis[enum["RIGHT_SHOULDER"]], vis[enum["LEFT_SHOULDER"]] = right, left
        x, y, score = blazepose_to_op18(xy, vis, 256, 176)
        for name, op_idx in OP18_FROM_BLAZEPOSE.items():
            i = enum[name]
            assert (x[op_idx], y[op_idx]) == (round(xy[i, 0]), round(xy[i, 1])), name
            assert score[op_idx] == pytest.approx(vis[i]), name
        assert score[NECK] == pytest.approx(min(right, left))
    rs, ls = xy[enum["RIGHT_SHOULDER"]], xy[enum["LEFT_SHOULDER"]]
    assert (x[NECK], y[NECK]) == (round((rs[0] + ls[0]) / 2), round((rs[1] + ls[1]) / 2))
    assert x.dtype == y.dtype == np.int32 and score.dtype == np.float32


def test_low_visibility_and_out_of_image_landmarks_are_missing():
    xy, vis = landmarks()
    enum = landmark_indices()
    vis[enum["LEFT_SHOULDER"]] = 0.49  # below min_visibility 0.5
    vis[enum["NOSE"]] = 0.5  # at the threshold: kept
    xy[enum["RIGHT_ANKLE"]] = (-3.0, 100.0)  # left of the frame
    xy[enum["LEFT_ANKLE"]] = (100.0, 255.6)  # rounds to row 256 of a 256-row image
    xy[enum["RIGHT_WRIST"]] = (175.4, 10.0)  # last column: inside
    x, y, score = blazepose_to_op18(xy, vis, 256, 176, min_visibility=0.5)
    for k in ("left_shoulder", "right_ankle", "left_ankle", "neck"):  # neck needs both shoulders
        assert (x[OP[k]], y[OP[k]], score[OP[k]]) == (-1, -1, 0.0), k
    assert x[OP["nose"]] >= 0 and (x[OP["right_wrist"]], y[OP["right_wrist"]]) == (175, 10)
    assert int((x >= 0).sum()) == 18 - 4


def test_model_files_ship_inside_the_wheel():
    files = model_files()
    assert {p.name for p in files.values()} == {
        "pose_detection.tflite",
        "pose_landmark_full.tflite",
    }
    assert all(p.is_file() and p.stat().st_size > 1e6 for p in files.values())
    assert resolve_estimator("mediapipe").estimator == "mediapipe"


# Hand-measured on 3x enlarged copies with a 20 px grid (x, y in image pixels).
HAND = {
    "condition.jpg": {
        "nose": (95, 47),
        "right_shoulder": (50, 106),
        "left_shoulder": (143, 97),
        "right_hip": (72, 230),
        "left_hip": (122, 230),
    },
    "target_pose_reference.jpg": {
        "nose": (70, 36),
        "left_shoulder": (111, 77),
        "left_hip": (98, 200),
    },
}
TOLERANCE = {"nose": 5, "right_shoulder": 8, "left_shoulder": 8, "right_hip": 10, "left_hip": 10}


@pytest.mark.parametrize("name", sorted(HAND))
def test_landmarks_on_real_photos_match_hand_measurements(estimator, reference, name):
    x, y, score = estimator.predict([photo(reference, name)])[0]
    for k, (hx, hy) in HAND[name].items():
        assert score[OP[k]] >= 0.5, k
        assert abs(x[OP[k]] - hx) <= TOLERANCE[k] and abs(y[OP[k]] - hy) <= TOLERANCE[k], (
            k,
            x[OP[k]],
            y[OP[k]],
        )


def test_frontal_photos_keep_left_and_right_and_an_empty_image_has_nobody(estimator, reference):
    import matplotlib
    from skimage import data

    grace = np.asarray(
        Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    )
    images = [
        data.astronaut(),
        grace,
        photo(reference, "condition.jpg"),
        np.full((256, 176, 3), 255, np.uint8),
    ]
    *people, empty = estimator.predict(images)
    for x, y, _ in people:  # facing the camera: the person's right is the image's left
        assert 0 <= x[OP["right_shoulder"]] < x[OP["nose"]] < x[OP["left_shoulder"]]
        assert y[OP["nose"]] < y[NECK] and x[NECK] >= 0
    assert (empty[0] == -1).all() and (empty[1] == -1).all() and (empty[2] == 0).all()
    assert estimator.name.startswith("mediapipe-0.10.21:pose_landmark_full")


def test_weights_status_lists_blazepose_files_as_present():
    from cli.weights import blazepose_rows
    from pipeline.core.weights import file_sha256

    rows = {r["name"]: r for r in blazepose_rows()}
    assert set(rows) == {"blazepose_detector", "blazepose_landmark_full"}
    for r in rows.values():
        assert r["path"] and "mediapipe" in r["path"] and r["size"] > 1e6
        assert r["sha256"] == file_sha256(r["path"])


def test_transfer_cli_estimates_both_poses_with_mediapipe(reference, tmp_path):
    import torch
    from click.testing import CliRunner

    from cli.main import cli
    from pipeline.generator.networks import build_generator

    ckpt = tmp_path / "netG_1.pth"
    torch.manual_seed(0)
    torch.save(build_generator(4, init=False).state_dict(), ckpt)
    api = reference / "api-test"
    res = CliRunner().invoke(
        cli,
        [
            "transfer",
            "--condition",
            str(api / "condition.jpg"),
            "--reference",
            str(api / "target_pose_reference.jpg"),
            "--estimator",
            "mediapipe",
            "--out",
            str(tmp_path / "c.jpg"),
            "--checkpoint",
            str(ckpt),
            "--ngf",
            "4",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "c.jpg").size == (176, 256)


class Counting:
    """The real estimator, counting the images it is asked to estimate."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0

    def predict(self, images):
        self.seen += len(images)
        return self.inner.predict(images)


def test_pckh_estimates_each_distinct_image_once(estimator, reference):
    from pipeline.pose.estimator_factory import predict_once_per_image

    a, b = photo(reference, "condition.jpg"), photo(reference, "target_pose_reference.jpg")
    counting = Counting(estimator)
    predict = predict_once_per_image(counting)
    first = predict([a, b, a.copy()])
    again = predict([b, a])
    assert counting.seen == 2  # a twice and b in the first call, both again: two estimates
    direct = estimator.predict([a, b])
    got = [first[0], first[1], first[2], again[1], again[0]]
    want = [direct[0], direct[1], direct[0], direct[0], direct[1]]
    for g, w in zip(got, want, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(g, w, strict=True))
    flipped = np.ascontiguousarray(a[:, ::-1])
    predict([flipped])
    assert counting.seen == 3  # other pixels, another estimate
