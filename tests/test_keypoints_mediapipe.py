"""The keypoints stage with mediapipe on Ray over a tree of real photographs (same rows as
an in-process loop, bad files as error rows, resume, QA), and evaluate's PCKh with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.atomic_io import read_table, write_bytes_atomic, write_table
from pipeline.core.config import load_config
from pipeline.core.imaging import encode_jpeg, load_rgb
from pipeline.core.layout import DatasetLayout
from pipeline.core.legacy_csv import (
    read_image_list,
    read_keypoints_csv,
    write_image_list,
    write_keypoints_csv,
)
from pipeline.core.paths import file_id
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.pose.estimator_factory import build_estimator
from pipeline.pose.keypoint_qa import KEYPOINT_QA_SCHEMA
from stages.keypoints import run_keypoints

EMPTY = "img/MEN/Suits/id_00000002/03_7_additional.jpg"  # a white image: nobody


def real_photos(reference: Path) -> dict[str, np.ndarray]:
    import matplotlib
    from skimage import data

    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    api = reference / "api-test"
    return {
        "img/WOMEN/Tanks/id_00000001/01_1_front.jpg": np.asarray(load_rgb(api / "condition.jpg")),
        "img/WOMEN/Tanks/id_00000001/02_2_side.jpg": np.asarray(
            load_rgb(api / "target_pose_reference.jpg")
        ),
        "img/MEN/Suits/id_00000002/01_1_front.jpg": data.astronaut(),
        "img/MEN/Suits/id_00000002/02_1_front.jpg": np.asarray(load_rgb(grace)),
        EMPTY: np.full((256, 176, 3), 255, np.uint8),  # nobody
    }


@pytest.fixture(scope="module")
def photo_tree(reference, tmp_path_factory) -> Path:
    """Real photographs in the DeepFashion layout, plus bad files listed in the train split."""
    root = tmp_path_factory.mktemp("photos") / "data"
    photos = real_photos(reference)
    for rel, image in photos.items():
        write_bytes_atomic(root / rel, encode_jpeg(image))
    bad = root / "img/bad"
    bad.mkdir(parents=True)
    first = root / next(iter(photos))
    (bad / "truncated.jpg").write_bytes(first.read_bytes()[:1500])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image\n")
    paths = sorted(photos)
    write_image_list(
        paths[:3] + ["img/bad/truncated.jpg", "img/bad/empty.jpg", "img/bad/text.jpg"],
        root / "train_img_list.csv",
    )
    write_image_list(paths[3:], root / "test_img_list.csv")
    return root


def bare_loop(root: Path, paths: list[str]) -> dict[str, tuple]:
    est = build_estimator("mediapipe")
    out = {}
    for p in paths:
        image = np.asarray(load_rgb(root / p))
        x, y, score = est.predict([image])[0]
        out[p] = (x, y, score, image.shape[:2])
    return out


@pytest.mark.slow
def test_mediapipe_stage_on_ray_matches_bare_loop_with_errors_resume_and_qa(
    photo_tree, tmp_path, ray_session
):
    root = tmp_path / "data"
    shutil.copytree(photo_tree, root)
    layout = DatasetLayout(root)
    good = sorted(
        p
        for s in ("train", "test")
        for p in read_image_list(layout.image_list(s), root)
        if not p.startswith("img/bad/")
    )
    expected = bare_loop(root, good)
    # The bare loop's keypoints as a reference CSV, with one point moved far off for QA.
    reference = pd.DataFrame(
        [
            {"file_id": file_id(p), "img_h": kp[3][0], "img_w": kp[3][1], "x": kp[0], "y": kp[1]}
            for p, kp in expected.items()
        ]
    )
    moved = good.index("img/WOMEN/Tanks/id_00000001/01_1_front.jpg")
    reference.at[moved, "x"] = (
        reference.at[moved, "x"] + np.eye(18, dtype=np.int32)[0] * 60
    )  # the nose
    write_keypoints_csv(reference, tmp_path / "reference.csv")

    cfg = load_config(
        overrides=[
            f"dataset.root={root}",
            "keypoints.batch_size=2",
            "keypoints.estimator=mediapipe",
        ]
    )
    result = run_keypoints(cfg, progress=False, compare=str(tmp_path / "reference.csv"))
    table = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    assert result.rows_out == 8 and result.errors == 3
    errors = table.set_index("path")["error"]
    assert errors["img/bad/empty.jpg"] == "empty file (0 bytes)"
    assert (
        "truncated" in errors["img/bad/truncated.jpg"]
        and "not a readable image" in errors["img/bad/text.jpg"]
    )
    fine = table[table["error"].isna()].set_index("path")
    assert (
        sorted(fine.index) == good and fine["estimator"].str.startswith("mediapipe-0.10.21:").all()
    )
    for p, (x, y, score, _) in expected.items():  # the same rows as the bare in-process loop
        assert list(fine.loc[p, "x"]) == list(x) and list(fine.loc[p, "y"]) == list(y), p
        assert np.allclose(fine.loc[p, "score"], score) and fine.loc[p, "n_valid"] == int(
            (x >= 0).sum()
        )
    assert fine.loc[EMPTY, "n_valid"] == 0
    assert (fine.drop(index=EMPTY)["n_valid"] >= 8).all()
    legacy = read_keypoints_csv(layout.keypoints_csv("train"))
    assert len(legacy) == 3 and set(legacy["file_id"]) == {file_id(p) for p in good[:3]}

    qa = read_table(result.outputs["keypoints_qa"], KEYPOINT_QA_SCHEMA).set_index("path")
    counted = qa[qa["error"].isna()]
    assert len(counted) == 4 and "fewer than 2 head" in qa.loc[EMPTY, "error"]  # the empty image
    moved_row = counted.loc[good[moved]]
    assert moved_row["n_correct"] == moved_row["n_ref_valid"] - 1 and moved_row["error_px"][0] == 60
    assert (counted.drop(index=good[moved])["pckh"] == 1.0).all()
    assert any(n.startswith("QA against reference.csv: PCKh") for n in result.notes)

    # An interrupted run: part files with the first rows only, no table.
    shutil.rmtree(layout.keypoints_table)  # a partitioned table: a folder
    write_table(
        table[table["error"].isna()].iloc[:3],
        layout.keypoints_parts / "interrupted.parquet",
        KEYPOINTS_SCHEMA,
    )
    resumed = run_keypoints(cfg, progress=False)
    assert resumed.skipped == 3 and not layout.keypoints_parts.exists()
    again = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    pd.testing.assert_frame_equal(
        again.drop(columns=["x", "y", "score"]), table.drop(columns=["x", "y", "score"])
    )
    assert [list(v) for v in again["x"]] == [list(v) for v in table["x"]]


def shifted(image: np.ndarray, dx: int) -> np.ndarray:
    out = np.full_like(image, 255)
    out[:, dx:] = image[:, :-dx]
    return out


@pytest.mark.slow
def test_pckh_in_evaluate_with_mediapipe_on_real_photos(reference, tmp_path, ray_session):
    from stages.evaluate import run_evaluate

    gen = tmp_path / "generated"
    photos = [p for p in real_photos(reference).items() if not p[0].endswith("additional.jpg")]
    for n, (rel, image) in enumerate(photos):
        name = f"{n}@{file_id(rel)}.jpg"
        data = encode_jpeg(image)
        write_bytes_atomic(gen / "real_images" / "real_B" / name, data)
        write_bytes_atomic(gen / "fake_images" / "iter_1" / "fake_B" / name, data)  # identical
        write_bytes_atomic(
            gen / "fake_images" / "iter_2" / "fake_B" / name,
            encode_jpeg(shifted(image, image.shape[1] // 4)),
        )  # moved right
    cfg = load_config(
        overrides=["ray.num_cpus=2", f"output.root={tmp_path}", "keypoints.estimator=mediapipe"]
    )
    result = run_evaluate(cfg, generated=gen, out=tmp_path / "eval", metrics=["pckh"])
    summary = pd.read_parquet(tmp_path / "eval" / "summary.parquet").set_index("checkpoint")
    assert not [n for n in result.notes if "skipped" in n] and (summary["status"] == "ok").all()
    assert summary.loc["1", "mean"] == 1.0 and summary.loc["1", "n"] == 4
    assert summary.loc["2", "mean"] < 0.5
    legacy = pd.read_csv(tmp_path / "eval" / "pckh_score.csv").set_index("iter")
    assert legacy.loc[1, "score_fake"] == 1.0 and legacy.loc[2, "score_fake"] < 0.5
    Image.open(
        gen / "fake_images" / "iter_2" / "fake_B" / f"0@{file_id(photos[0][0])}.jpg"
    ).verify()
