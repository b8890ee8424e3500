"""Keypoints stage: COCO-17 -> OpenPose-18 on openpifpaf annotations, safe checkpoint
loading, the Ray Data pipeline with a random openpifpaf network, ground-truth import."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.atomic_io import read_table, write_table
from pipeline.core.config import load_config
from pipeline.core.content_state import file_digest
from pipeline.core.layout import DatasetLayout
from pipeline.core.legacy_csv import read_image_list, read_keypoints_csv, write_image_list
from pipeline.core.partitioned import read_index
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.core.weights import KNOWN_WEIGHTS, WeightsError
from pipeline.pose.openpifpaf_estimator import (
    KeypointEstimator,
    best_person,
    checkpoint_filename,
    inside_image,
    load_network,
    resolve_checkpoint,
)
from pipeline.pose.skeleton import COCO17_NAMES, NECK, OP18_NAMES
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree
from stages.keypoints import keypoints_from_csv, list_images, run_keypoints


def coco_annotation(xy: np.ndarray, conf: np.ndarray):
    import openpifpaf

    ann = openpifpaf.Annotation(keypoints=list(COCO17_NAMES), skeleton=[(1, 2)])
    for k in range(17):
        ann.add(k, (float(xy[k, 0]), float(xy[k, 1]), float(conf[k])))
    return ann


def test_best_person_maps_coco_names_to_openpose18():
    xy = np.stack([np.arange(17) * 3.0 + 10, np.arange(17) * 2.0 + 20], axis=1)
    conf = np.full(17, 0.9)
    conf[COCO17_NAMES.index("left_ankle")] = 0.0  # not found
    weak = coco_annotation(xy + 50, np.full(17, 0.2))
    strong = coco_annotation(xy, conf)
    x, y, score = best_person([weak, strong])
    assert strong.score > weak.score
    for op_idx, name in enumerate(OP18_NAMES):
        if name == "neck":
            continue
        c = COCO17_NAMES.index(name)
        expected = (-1, -1) if name == "left_ankle" else (round(xy[c, 0]), round(xy[c, 1]))
        assert (x[op_idx], y[op_idx]) == expected, name
    ls, rs = COCO17_NAMES.index("left_shoulder"), COCO17_NAMES.index("right_shoulder")
    assert (x[NECK], y[NECK]) == tuple(np.round((xy[ls] + xy[rs]) / 2).astype(int))
    assert score[NECK] == pytest.approx(0.9)


def test_no_person_and_out_of_frame_points_are_missing():
    x, y, score = best_person([])
    assert (x == -1).all() and (y == -1).all() and (score == 0).all()
    kp = (
        np.array([5, -2, 200] + [10] * 15, np.int32),
        np.array([5, 5, 5] + [300] * 15, np.int32),
        np.ones(18, np.float32),
    )
    x, y, score = inside_image(kp, height=256, width=176)
    assert x[0] == 5 and (x[1:] == -1).all() and (y[1:] == -1).all() and score[1:].sum() == 0


def test_registry_names_openpifpaf_download_file():
    assert KNOWN_WEIGHTS["shufflenetv2k16"].filename == checkpoint_filename("shufflenetv2k16")


def test_missing_named_checkpoint_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match=r"7189450a\.pkl.*not found in .*torch"):
        resolve_checkpoint("shufflenetv2k16", tmp_path / "weights")
    with pytest.raises(WeightsError, match="neither a file nor a known"):
        resolve_checkpoint("no_such_net")


class NotOpenpifpaf:
    """A class outside the allow-list: a pickle naming it must be refused."""


def test_checkpoint_outside_allowlist_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    torch.save({"model": NotOpenpifpaf(), "epoch": 0}, path)
    with pytest.raises(WeightsError, match="refused by the weights-only loader"):
        load_network(path)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """A random-initialised openpifpaf shufflenetv2k16 with COCO keypoint heads, saved the
    way openpifpaf saves checkpoints (a pickled module)."""
    import openpifpaf

    torch.manual_seed(0)
    factory = openpifpaf.network.Factory()
    factory.base_name = "shufflenetv2k16"
    net, _ = factory.factory(head_metas=openpifpaf.plugins.coco.CocoKp().head_metas)
    path = tmp_path_factory.mktemp("openpifpaf") / "shufflenetv2k16-random.pkl"
    torch.save({"model": net, "epoch": 0}, path)
    return path


def test_estimator_loads_pickled_network_and_predicts(random_checkpoint):
    est = KeypointEstimator(random_checkpoint, device="cpu")
    images = [
        np.full((64, 48, 3), 255, np.uint8),
        np.zeros((32, 32, 3), np.uint8),
        np.zeros((64, 48, 3), np.uint8),
    ]
    out = est.predict(images)
    assert len(out) == 3
    for x, y, score in out:
        assert (
            x.shape == y.shape == score.shape == (18,)
            and x.dtype == np.int32
            and score.dtype == np.float32
        )


@pytest.fixture
def small_tree(tmp_path) -> Path:
    """2 identities x 3 poses plus bad files listed in the train split."""
    root = tmp_path / "data"
    write_synthetic_tree(root, identities=2, poses_per_identity=3, seed=5, test_fraction=0.5)
    good = sorted((root / "img").rglob("*.jpg"))
    (root / "img/bad").mkdir()
    (root / "img/bad/truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (root / "img/bad/empty.jpg").write_bytes(b"")
    (root / "img/bad/text.jpg").write_text("not an image\n")
    train = read_image_list(root / "train_img_list.csv", root)
    write_image_list(
        train + ["img/bad/truncated.jpg", "img/bad/empty.jpg", "img/bad/text.jpg"],
        root / "train_img_list.csv",
    )
    return root


@pytest.mark.slow
def test_keypoints_stage_on_ray_with_errors_and_resume(small_tree, random_checkpoint, ray_session):
    cfg = load_config(overrides=[f"dataset.root={small_tree}", "keypoints.batch_size=4"])
    layout = DatasetLayout(small_tree)
    result = run_keypoints(cfg, checkpoint=str(random_checkpoint), progress=False)
    clean = read_table(layout.keypoints_table)
    assert list(clean.columns) == KEYPOINTS_SCHEMA.names
    listed = sorted(
        read_image_list(layout.image_list("train"), small_tree)
        + read_image_list(layout.image_list("test"), small_tree)
    )
    assert clean["path"].tolist() == listed and result.rows_out == 9 and result.errors == 3
    errors = clean.set_index("path")["error"]
    assert errors["img/bad/empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in errors["img/bad/truncated.jpg"]
    assert "not a readable image" in errors["img/bad/text.jpg"]
    fine = clean[clean["error"].isna()]
    assert (fine["img_h"] == 256).all() and (fine["img_w"] == 176).all()
    assert fine["estimator"].eq("openpifpaf:shufflenetv2k16-random.pkl").all()
    assert (fine["n_valid"] == [int((np.asarray(x) >= 0).sum()) for x in fine["x"]]).all()
    # The legacy CSVs omit error rows.
    legacy = read_keypoints_csv(layout.keypoints_csv("train"))
    assert len(legacy) == int((fine["split"] == "train").sum())

    # An interrupted run: only part files with the first rows, no table yet.
    shutil.rmtree(layout.keypoints_table)  # a partitioned table: a folder
    write_table(fine.iloc[:4], layout.keypoints_parts / "interrupted.parquet", KEYPOINTS_SCHEMA)
    resumed = run_keypoints(cfg, checkpoint=str(random_checkpoint), progress=False)
    assert resumed.skipped == 4 and not layout.keypoints_parts.exists()
    again = read_table(layout.keypoints_table)
    pd.testing.assert_frame_equal(
        again.drop(columns=["x", "y", "score"]), clean.drop(columns=["x", "y", "score"])
    )
    for col in ("x", "y"):
        assert [list(v) for v in again[col]] == [list(v) for v in clean[col]]


@pytest.mark.slow
def test_rows_another_model_made_are_redone_and_out_digests_the_dataset_images(
    random_checkpoint, ray_session, tmp_path
):
    root, out = tmp_path / "data", tmp_path / "elsewhere"
    write_synthetic_tree(root, identities=2, poses_per_identity=3, seed=5, test_fraction=0.5)
    cfg = load_config(
        overrides=[
            f"dataset.root={root}",
            f"output.root={tmp_path / 'o'}",
            "keypoints.batch_size=4",
        ]
    )
    # An earlier run left rows of this checkpoint and of another one of the same network.
    mine = f"openpifpaf:{random_checkpoint.name}"
    earlier = keypoints_from_csv(root / GROUND_TRUTH_CSV, list_images(cfg))
    earlier["estimator"] = [
        mine if i % 2 else "openpifpaf:shufflenetv2k16-other.pkl" for i in range(len(earlier))
    ]
    layout = DatasetLayout(out)
    write_table(earlier, layout.keypoints_table, KEYPOINTS_SCHEMA)
    result = run_keypoints(cfg, checkpoint=str(random_checkpoint), out=str(out), progress=False)
    assert result.skipped == len(earlier) // 2
    table = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA).set_index("path")
    assert table["estimator"].eq(mine).all()
    for r in earlier[earlier["estimator"] == mine].itertuples():  # kept as they were
        assert list(table.loc[r.path, "x"]) == list(r.x)
    # Each row's source digest is that of the dataset's image, wherever the table goes.
    sources = read_table(layout.keypoints_sources)
    assert dict(zip(sources["path"], sources["digest"], strict=True)) == {
        p: file_digest(root / p) for p in table.index
    }


def test_annotations_import_gives_ground_truth(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    cfg = load_config(overrides=[f"dataset.root={root}"])
    result = run_keypoints(cfg, annotations=str(root / GROUND_TRUTH_CSV))
    table = read_table(DatasetLayout(root).keypoints_table, KEYPOINTS_SCHEMA)
    truth = read_keypoints_csv(root / GROUND_TRUTH_CSV).set_index("file_id")
    assert result.rows_out == len(truth) == len(table) and result.errors == 0
    for r in table.itertuples():
        assert (np.asarray(r.x) == truth.loc[r.file_id, "x"]).all()
        assert (np.asarray(r.y) == truth.loc[r.file_id, "y"]).all()
    for split in ("train", "test"):
        legacy = read_keypoints_csv(DatasetLayout(root).keypoints_csv(split))
        assert len(legacy) == int((table["split"] == split).sum())
        assert (np.stack(legacy["x"]) == np.stack(truth.loc[legacy["file_id"], "x"])).all()
    # The table is partitioned by identity: an import again rewrites no part, and one with
    # one image's annotation moved rewrites that image's part only.
    parts = len(read_index(DatasetLayout(root).keypoints_table).parts())
    again = run_keypoints(cfg, annotations=str(root / GROUND_TRUTH_CSV))
    assert f"keypoints table: 0 of {parts} part(s) (of whole identities) rewritten" in str(
        again.notes
    )
    lines = (root / GROUND_TRUTH_CSV).read_text().splitlines(keepends=True)
    name, h, w, _, *xy = lines[-1].split(",")
    lines[-1] = ",".join([name, h, w, "5", *xy])  # its first keypoint's x moved
    (root / GROUND_TRUTH_CSV).write_text("".join(lines))
    moved = run_keypoints(cfg, annotations=str(root / GROUND_TRUTH_CSV))
    assert f"keypoints table: 1 of {parts} part(s)" in str(moved.notes), moved.notes
    assert len(read_table(DatasetLayout(root).keypoints_table)) == len(table)


def test_images_listed_out_of_order_and_twice_come_out_once_in_path_order(tmp_path):
    """The image lists are read by Arrow and joined without a two-column sort: a list out
    of order, with padding spaces and an image in both splits, still gives each image
    once (its first split), in path order."""
    root = tmp_path / "data"
    paths = [f"img/MEN/Denim/id_0000000{i}/01_1_front.jpg" for i in range(4)]
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")
    write_image_list([f" {paths[2]} ", paths[0], paths[1]], root / "train_img_list.csv")
    write_image_list([paths[3], paths[1]], root / "test_img_list.csv")
    images = list_images(load_config(overrides=[f"dataset.root={root}"]))
    assert images["path"].tolist() == paths
    assert images["split"].tolist() == ["train", "train", "train", "test"]
    assert read_image_list(root / "train_img_list.csv", root) == [paths[2], paths[0], paths[1]]
