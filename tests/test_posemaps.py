"""Pose-maps stage: map contents equal the keypoints, npz format, Ray run, skip/force,
out-of-image keypoints counted."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.core.atomic_io import read_table, write_table
from pipeline.core.config import load_config
from pipeline.core.layout import DatasetLayout
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.pose.posemap import load_posemap, write_posemap
from stages.keypoints import keypoints_output
from stages.posemaps import run_posemaps


def test_map_holds_exactly_the_keypoints(tmp_path):
    x = np.array([10, -1, 30] + [-1] * 14 + [175], np.int32)
    y = np.array([20, -1, 40] + [-1] * 14 + [255], np.int32)
    path = tmp_path / "m.npz"
    write_posemap(path, x, y, 256, 176)
    with np.load(path) as data:
        assert list(data.keys()) == ["arr_0"]
        m = data["arr_0"]
    assert m.shape == (256, 176, 18) and m.dtype == np.uint8
    assert np.argwhere(m).tolist() == [[20, 10, 0], [40, 30, 2], [255, 175, 17]]
    # As the published utility builds it: zeros, then 1 at [y, x, k].
    expected = np.zeros((256, 176, 18), np.uint8)
    for k in (0, 2, 17):
        expected[y[k], x[k], k] = 1
    assert np.array_equal(m, expected)


def test_gaussian_map_peaks_at_keypoints(tmp_path):
    x = np.full(18, -1, np.int32)
    y = np.full(18, -1, np.int32)
    x[3], y[3] = 50, 60
    write_posemap(tmp_path / "g.npz", x, y, 128, 96, sigma=4.0)
    m = load_posemap(tmp_path / "g.npz")
    assert m.dtype == np.float32 and np.unravel_index(m[:, :, 3].argmax(), (128, 96)) == (60, 50)
    assert m[:, :, 3].max() == pytest.approx(1.0) and m[:, :, 4].max() == 0


def test_stage_writes_skips_and_counts(annotated_root, tmp_path, ray_session):
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps"))
    layout = DatasetLayout(root)
    table = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    x0 = np.asarray(table.at[0, "x"]).copy()
    first_valid = int(np.nonzero(x0 >= 0)[0][0])
    x0[first_valid] = 999  # outside the 176-wide image
    table.at[0, "x"] = x0
    table.at[1, "error"] = "not a readable image: test"
    keypoints_output(layout).commit(table)
    cfg = load_config(overrides=[f"dataset.root={root}", "posemaps.batch_size=5"])

    result = run_posemaps(cfg, progress=False)
    assert result.rows_out == len(table) - 1 and result.errors == 1
    assert any("1 out-of-image keypoint(s)" in n for n in result.notes)
    for r in table.iloc[[0, 2, 3]].itertuples():
        m = load_posemap(layout.posemap(r.split, r.file_id))
        ys, xs, ks = np.nonzero(m)
        inside = [
            (k, int(r.y[k]), int(r.x[k]))
            for k in range(18)
            if 0 <= r.x[k] < r.img_w and r.y[k] >= 0
        ]
        assert sorted(zip(ks.tolist(), ys.tolist(), xs.tolist(), strict=True)) == inside
    assert not layout.posemap(table.at[1, "split"], table.at[1, "file_id"]).exists()

    again = run_posemaps(cfg, progress=False)
    assert again.rows_out == 0 and again.skipped == len(table) - 1
    old = layout.posemap(table.at[2, "split"], table.at[2, "file_id"])
    os.utime(old, (0, 0))  # an older file with the same content is fine
    assert run_posemaps(cfg, progress=False).rows_out == 0
    os.remove(old)  # a map deleted by hand is written again, alone
    assert run_posemaps(cfg, progress=False).rows_out == 1 and old.exists()
    os.utime(old, (0, 0))
    x2 = np.asarray(table.at[2, "x"]).copy()
    x2[x2 >= 0] -= 1  # one row's keypoints move
    table.at[2, "x"] = x2
    gone = table.iloc[3]
    keypoints_output(layout).commit(table.drop(index=3))
    assert run_posemaps(cfg, progress=False).rows_out == 1
    moved = load_posemap(old)
    assert sorted(np.nonzero(moved)[1].tolist()) == sorted(int(v) for v in x2 if 0 <= v < 176)
    assert not layout.posemap(gone.split, gone.file_id).exists()  # its image left the table
    table = table.drop(index=3)
    assert run_posemaps(cfg, force=True, progress=False).rows_out == len(table) - 1


def test_maps_written_in_ray_tasks_equal_those_written_in_process(
    annotated_root, tmp_path, ray_session
):
    written = {}
    for executor in ("in_process", "ray"):
        root = tmp_path / executor
        shutil.copytree(annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps"))
        cfg = load_config(
            overrides=[f"dataset.root={root}", f"posemaps.executor={executor}",
                       "posemaps.batch_size=3"]
        )  # fmt: skip
        result = run_posemaps(cfg, progress=False)
        assert f"written {executor} as configured" in result.notes
        index = read_table(DatasetLayout(root).posemap_index)
        if executor == "ray":
            assert index["node"].notna().all()  # the node of the task that wrote each map
        written[executor] = {t: load_posemap(root / t).tobytes() for t in sorted(index["target"])}
    assert written["in_process"] == written["ray"] and len(written["ray"]) > 5


def test_the_map_index_keeps_each_targets_last_row_and_only_maps_under_its_root(tmp_path):
    """read_index in Arrow: a target listed twice (an index written by an interrupted run
    appended to) keeps its last row; an absolute target under the root becomes relative,
    one outside it is dropped (never ours to delete)."""
    from stages.posemaps import POSEMAP_INDEX_SCHEMA, read_index

    layout = DatasetLayout(tmp_path)
    rows = {
        "target": ["train_pose_maps/a.npz", "test_pose_maps/b.npz", "train_pose_maps/a.npz",
                   f"{tmp_path}/test_pose_maps/c.npz", "/elsewhere/test_pose_maps/d.npz"],
        "digest": ["old", "b", "new", "c", "d"],
        "node": [None, "n1", "n2", None, None],
    }  # fmt: skip
    write_table(pd.DataFrame(rows), layout.posemap_index, POSEMAP_INDEX_SCHEMA)
    index = read_index(layout).to_pydict()
    assert index == {
        "target": ["test_pose_maps/b.npz", "train_pose_maps/a.npz", "test_pose_maps/c.npz"],
        "digest": ["b", "new", "c"],
        "node": ["n1", "n2", None],
    }


def test_map_ahead_takes_items_only_a_window_ahead_of_the_results():
    """The in-process writer makes a batch's pandas frame only a few batches ahead of the
    one written (a million rows at once were 600 MB)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.cluster.batch_stream import map_ahead

    taken = []

    def items():
        for i in range(10):
            taken.append(i)
            yield i

    with ThreadPoolExecutor(2) as pool:
        out = map_ahead(pool, lambda i: i * i, items(), 3)
        assert next(out) == 0 and taken == [0, 1, 2]
        assert list(out) == [i * i for i in range(1, 10)]
