"""OpenPose-18 keypoints with BlazePose from the mediapipe wheel: its models ship inside the
package (DESIGN 6: local weights), so this estimator runs offline on CPU."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.pose.skeleton import L_SHOULDER, MISSING, N_KEYPOINTS, NECK, R_SHOULDER

if TYPE_CHECKING:
    from pipeline.pose.skeleton import Keypoints

# BlazePose-33 landmark (mediapipe's PoseLandmark enum name) -> OpenPose-18 index. Both
# name sides from the person's point of view. The neck has no landmark: it is synthesised.
OP18_FROM_BLAZEPOSE = {
    "NOSE": 0,
    "RIGHT_SHOULDER": 2,
    "RIGHT_ELBOW": 3,
    "RIGHT_WRIST": 4,
    "LEFT_SHOULDER": 5,
    "LEFT_ELBOW": 6,
    "LEFT_WRIST": 7,
    "RIGHT_HIP": 8,
    "RIGHT_KNEE": 9,
    "RIGHT_ANKLE": 10,
    "LEFT_HIP": 11,
    "LEFT_KNEE": 12,
    "LEFT_ANKLE": 13,
    "RIGHT_EYE": 14,
    "LEFT_EYE": 15,
    "RIGHT_EAR": 16,
    "LEFT_EAR": 17,
}
N_LANDMARKS = 33

# The only landmark model the 0.10.21 wheel holds is the full one (model_complexity 1).
MODEL_COMPLEXITY = 1
MODEL_FILES = {
    "blazepose_detector": "modules/pose_detection/pose_detection.tflite",
    "blazepose_landmark_full": "modules/pose_landmark/pose_landmark_full.tflite",
}
MODEL_NAME = "pose_landmark_full"
DEFAULT_MIN_VISIBILITY = 0.5


class MediapipeUnavailable(RuntimeError):
    """mediapipe (with its BlazePose models) is not installed in this environment."""


def mediapipe_dir() -> Path | None:
    """The installed mediapipe package directory, found without importing it."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def blazepose_name() -> str | None:
    """What BlazePose rows record as their estimator: the mediapipe version and the model
    (None when mediapipe is not installed)."""
    from importlib.metadata import version

    return f"mediapipe-{version('mediapipe')}:{MODEL_NAME}" if mediapipe_dir() else None


def model_files() -> dict[str, Path]:
    """Name -> path inside the installed package of each BlazePose model file (which may
    not exist when the wheel is broken; callers check)."""
    root = mediapipe_dir()
    if root is None:
        raise MediapipeUnavailable(
            "mediapipe is not installed: install mediapipe==0.10.21 with --no-deps as "
            "requirements.txt pins it (scripts/bootstrap.sh does)"
        )
    return {name: root / rel for name, rel in MODEL_FILES.items()}


def landmark_indices() -> dict[str, int]:
    """mediapipe's PoseLandmark enum, name -> landmark index."""
    from mediapipe.python.solutions.pose import PoseLandmark

    return {lm.name: int(lm.value) for lm in PoseLandmark}


def blazepose_to_op18(
    xy: np.ndarray,
    visibility: np.ndarray,
    height: int,
    width: int,
    min_visibility: float = DEFAULT_MIN_VISIBILITY,
    indices: dict[str, int] | None = None,
) -> Keypoints:
    """Map one person's 33 BlazePose landmarks to OpenPose-18.

    Args:
        xy: (33, 2) pixel coordinates in landmark order.
        visibility: (33,) in [0, 1].
        indices: PoseLandmark name -> row of `xy` (default: mediapipe's enum).
    Returns:
        x, y int32 (18,) with -1 for missing, float32 (18,) scores (the visibility; 0 for
        missing). A landmark is missing below `min_visibility` or when its rounded pixel is
        outside the image. The neck is the midpoint of the shoulders when both are valid,
        scored with the smaller shoulder visibility.
    """
    indices = indices or landmark_indices()
    xy = np.asarray(xy, np.float64)
    visibility = np.asarray(visibility, np.float64)
    x = np.full(N_KEYPOINTS, MISSING, np.int32)
    y = np.full(N_KEYPOINTS, MISSING, np.int32)
    score = np.zeros(N_KEYPOINTS, np.float32)
    for name, op_idx in OP18_FROM_BLAZEPOSE.items():
        i = indices[name]
        px, py = int(round(xy[i, 0])), int(round(xy[i, 1]))
        if visibility[i] >= min_visibility and 0 <= px < width and 0 <= py < height:
            x[op_idx], y[op_idx], score[op_idx] = px, py, visibility[i]
    if x[R_SHOULDER] != MISSING and x[L_SHOULDER] != MISSING:
        mid = (xy[indices["RIGHT_SHOULDER"]] + xy[indices["LEFT_SHOULDER"]]) / 2.0
        x[NECK], y[NECK] = int(round(mid[0])), int(round(mid[1]))
        score[NECK] = min(score[R_SHOULDER], score[L_SHOULDER])
    return x, y, score


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for the block. mediapipe's C++ graph logs through absl
    before absl's logging is initialised, so no environment variable (GLOG_minloglevel,
    TF_CPP_MIN_LOG_LEVEL) turns it off; it prints a handful of lines per Pose object."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class BlazePoseEstimator:
    """mediapipe's BlazePose on a list of RGB images -> OpenPose-18 keypoints of the one
    person it tracks per image (all -1 when it finds nobody).

    mediapipe's Pose holds graph state and is not thread safe: one per actor/process."""

    def __init__(
        self, min_visibility: float = DEFAULT_MIN_VISIBILITY, min_detection_confidence: float = 0.5
    ):
        files = model_files()
        absent = [str(p) for p in files.values() if not p.is_file()]
        if absent:
            raise MediapipeUnavailable(
                f"the mediapipe wheel lacks its BlazePose model file(s) {absent}: "
                "reinstall mediapipe==0.10.21"
            )
        from mediapipe.python.solutions.pose import Pose

        self.min_visibility = min_visibility
        self.indices = landmark_indices()
        self.name = blazepose_name()
        with quiet_native_stderr():
            self.pose = Pose(
                static_image_mode=True,
                model_complexity=MODEL_COMPLEXITY,
                min_detection_confidence=min_detection_confidence,
            )
            # The graph opens its models in its own threads after the constructor returns;
            # one image through it waits for that (and for the lines they log).
            self.pose.process(np.full((64, 64, 3), 255, np.uint8))
        # The landmark projection logs once more, on the first image with a person.
        self._logged_once = False

    def predict_one(self, image: np.ndarray) -> Keypoints:
        h, w = image.shape[:2]
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if self._logged_once:
            result = self.pose.process(image)
        else:
            with quiet_native_stderr():
                result = self.pose.process(image)
        if result.pose_landmarks is None:
            return (
                np.full(N_KEYPOINTS, MISSING, np.int32),
                np.full(N_KEYPOINTS, MISSING, np.int32),
                np.zeros(N_KEYPOINTS, np.float32),
            )
        self._logged_once = True
        lms = result.pose_landmarks.landmark
        xy = np.array([(lm.x * w, lm.y * h) for lm in lms], np.float64)
        visibility = np.array([lm.visibility for lm in lms], np.float64)
        return blazepose_to_op18(xy, visibility, h, w, self.min_visibility, self.indices)

    def predict(self, images: list[np.ndarray]) -> list[Keypoints]:
        return [self.predict_one(im) for im in images]

    def close(self) -> None:
        self.pose.close()
