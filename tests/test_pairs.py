"""Pairs stage: vectorised pair listing against a hand count, sampling, legacy CSVs."""

from __future__ import annotations

import shutil
from itertools import permutations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.core.atomic_io import read_table
from pipeline.core.config import load_config
from pipeline.core.layout import DatasetLayout
from pipeline.core.paths import identity_group
from pipeline.core.schemas import KEYPOINTS_SCHEMA, PAIRS_SCHEMA
from stages.pairs import make_pairs, ordered_pairs, pair_blocks, run_pairs, split_images


def test_ordered_pairs_lists_every_pair_within_groups():
    a, b = ordered_pairs(np.array([2, 1, 3]))
    expected = [(0, 1), (1, 0)] + list(permutations([3, 4, 5], 2))
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == expected


def splits_of(root):
    from pipeline.core.legacy_csv import read_image_list

    return {s: read_image_list(DatasetLayout(root).image_list(s), root) for s in ("train", "test")}


def test_pairs_match_hand_count_and_exclusions(annotated_root):
    kp = read_table(DatasetLayout(annotated_root).keypoints_table, KEYPOINTS_SCHEMA)
    kp.loc[0, "n_valid"] = 3
    kp.loc[5, "error"] = "not a readable image: x"
    splits = splits_of(annotated_root)
    table, counts = make_pairs(kp, splits, min_valid=8)
    ok = kp[(kp["n_valid"] >= 8) & kp["error"].isna()]
    for split, paths in splits.items():
        per_identity = (
            ok[ok["path"].isin(paths)].groupby(ok["path"].str.rsplit("/", n=1).str[0]).size()
        )
        assert counts.pairs[split] == int((per_identity * (per_identity - 1)).sum())
        expected = {
            (a, b)
            for _, g in ok[ok["path"].isin(paths)].groupby(ok["path"].str.rsplit("/", n=1).str[0])
            for a, b in permutations(g["path"], 2)
        }
        got = table[table["split"] == split]
        assert set(zip(got["imgA"], got["imgB"], strict=True)) == expected and len(got) == len(
            expected
        )
    assert counts.excluded == {"keypoint error": 1, "fewer than 8 valid keypoints": 1}
    assert (table["imgA"] != table["imgB"]).all()


def test_sampled_pairs_are_deterministic_and_capped(annotated_root):
    kp = read_table(DatasetLayout(annotated_root).keypoints_table, KEYPOINTS_SCHEMA)
    splits = splits_of(annotated_root)
    one, _ = make_pairs(kp, splits, 8, max_per_identity=5, seed=7)
    two, _ = make_pairs(kp, splits, 8, max_per_identity=5, seed=7)
    other, _ = make_pairs(kp, splits, 8, max_per_identity=5, seed=8)
    pd.testing.assert_frame_equal(one, two)
    assert not one.equals(other)
    assert one.groupby("group").size().max() == 5 and len(one) == 8 * 5


def test_stage_writes_table_and_legacy_csvs(annotated_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(
        annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps", "pairs.parquet")
    )
    result = run_pairs(load_config(overrides=[f"dataset.root={root}"]), min_valid=8)
    layout = DatasetLayout(root)
    table = read_table(layout.pairs_table, PAIRS_SCHEMA)
    assert result.rows_out == len(table) == 8 * 12
    for split in ("train", "test"):
        legacy = pd.read_csv(layout.pairs_csv(split))
        assert list(legacy.columns) == ["imgA", "imgB"]
        assert (
            legacy.values.tolist()
            == table.loc[table["split"] == split, ["imgA", "imgB"]].values.tolist()
        )
    assert any("train:" in n for n in result.notes)


def test_legacy_csvs_are_exported_up_to_a_size_and_stale_ones_removed(
    annotated_root, tmp_path, monkeypatch
):
    """pairs.export auto writes the CSVs while the pairs number at most CSV_MAX_PAIRS; above
    that, CSVs of an earlier (smaller) run are removed, since they no longer match the
    table; export true writes them whatever the size."""
    import stages.pairs

    root = tmp_path / "data"
    shutil.copytree(
        annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps", "pairs.parquet")
    )
    layout = DatasetLayout(root)
    cfg = load_config(overrides=[f"dataset.root={root}"])
    run_pairs(cfg, min_valid=8)
    assert layout.pairs_csv("train").is_file()
    monkeypatch.setattr(stages.pairs, "CSV_MAX_PAIRS", 8 * 12 - 1)  # one fewer than made
    result = run_pairs(cfg, min_valid=8)
    assert result.rows_out == len(read_table(layout.pairs_table, PAIRS_SCHEMA)) == 8 * 12
    assert not layout.pairs_csv("train").exists() and not layout.pairs_csv("test").exists()
    assert any("96 pairs > 95" in n for n in result.notes)
    assert sum("no longer matches the pairs table" in n for n in result.notes) == 2
    forced = run_pairs(load_config(overrides=[f"dataset.root={root}", "pairs.export=true"]),
                       min_valid=8)  # fmt: skip
    written = sum(len(pd.read_csv(layout.pairs_csv(s))) for s in ("train", "test"))
    assert written == forced.rows_out == 8 * 12


def test_unknown_keypoints_table_is_a_clear_error(tmp_path):
    import pytest

    from pipeline.core.errors import DataError

    with pytest.raises(DataError, match="run the keypoints stage first"):
        run_pairs(load_config(overrides=[f"dataset.root={tmp_path}"]))


def keep_valid(kp: pd.DataFrame, row, n: int) -> None:
    """Keep the first n present keypoints of one row, the others missing."""
    x, y = np.array(kp.at[row, "x"]), np.array(kp.at[row, "y"])
    assert (x >= 0).sum() >= n
    drop = np.flatnonzero(x >= 0)[n:]
    x[drop], y[drop] = -1, -1
    kp["x"] = [x if i == row else v for i, v in zip(kp.index, kp["x"], strict=True)]
    kp["y"] = [y if i == row else v for i, v in zip(kp.index, kp["y"], strict=True)]
    kp.loc[row, "n_valid"] = n


def test_exactly_min_valid_keypoints_is_enough_and_one_fewer_is_not(annotated_root):
    kp = read_table(DatasetLayout(annotated_root).keypoints_table, KEYPOINTS_SCHEMA)
    at, below = kp.index[kp["path"].map(identity_group) == identity_group(kp["path"].iloc[0])][:2]
    keep_valid(kp, at, 8)
    keep_valid(kp, below, 7)
    table, counts = make_pairs(kp, splits_of(annotated_root), min_valid=8)
    paired = set(table["imgA"]) | set(table["imgB"])
    assert kp.loc[at, "path"] in paired and kp.loc[below, "path"] not in paired
    assert counts.excluded == {"fewer than 8 valid keypoints": 1}


@pytest.mark.parametrize("block", [1, 2, 3])
def test_pairs_made_a_few_identities_at_a_time_equal_the_whole_table(annotated_root, block):
    """run_pairs writes the pairs block by block (bounded memory at a million images):
    the blocks, in order, are the table made at once, with or without sampling."""
    kp = read_table(DatasetLayout(annotated_root).keypoints_table, KEYPOINTS_SCHEMA)
    splits = splits_of(annotated_root)
    for sample in (None, 3):
        whole, counts = make_pairs(kp, splits, 8, max_per_identity=sample, seed=4)
        parts = list(pair_blocks(split_images(kp, splits, 8, block), sample, seed=4))
        assert len(parts) > len(splits)  # really made in blocks
        joined = pa.concat_tables([part for _, part in parts]).to_pandas()
        pd.testing.assert_frame_equal(joined, whole)
        assert sum(counts.pairs.values()) == len(whole)


def test_row_groups_gather_blocks_so_the_bytes_do_not_depend_on_the_block_size(
    annotated_root, tmp_path
):
    """Pairs are made a few identities at a time (memory), but written in row groups of
    ROW_GROUP_BLOCKS blocks of a split, so that a table written before, in blocks that
    size, keeps its bytes and content digest: blocks of 1 identity gathered by 2 give the
    same files as blocks of 2 identities one by one."""
    from stages.pairs import write_pair_blocks

    kp = read_table(DatasetLayout(annotated_root).keypoints_table, KEYPOINTS_SCHEMA)
    splits = splits_of(annotated_root)
    written = {}
    for block, per_group in ((1, 2), (2, 1)):
        layout = DatasetLayout(tmp_path / f"b{block}")
        blocks = pair_blocks(split_images(kp, splits, 8, block))
        written[block] = write_pair_blocks(blocks, layout, list(splits), per_row_group=per_group)
    assert written[1] == written[2] > 0
    for name in ("tables/pairs.parquet", "train_img_pairs.csv", "test_img_pairs.csv"):
        assert (tmp_path / "b1" / name).read_bytes() == (tmp_path / "b2" / name).read_bytes()
    single = DatasetLayout(tmp_path / "single")
    write_pair_blocks(
        pair_blocks(split_images(kp, splits, 8, 1)), single, list(splits), per_row_group=1
    )
    assert single.pairs_table.read_bytes() != (tmp_path / "b1/tables/pairs.parquet").read_bytes()
