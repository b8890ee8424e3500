import os
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.core.atomic_io import atomic_path, read_table, write_table
from pipeline.core.errors import DataError
from pipeline.core.legacy_csv import (
    KEYPOINT_CSV_COLUMNS,
    read_image_list,
    read_keypoints_csv,
    read_pairs_csv,
    write_image_list,
    write_keypoints_csv,
    write_pairs_csv,
)
from pipeline.core.paths import RootGuard, check_paths, file_id, identity_group, safe_path
from pipeline.core.schemas import KEYPOINTS_SCHEMA, PAIRS_SCHEMA
from pipeline.core.storage import safe_join


def keypoint_rows(n=3):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "path": [f"img/MEN/Denim/id_0000000{i}/01_1_front.jpg" for i in range(n)],
            "file_id": [f"imgMENDenimid_0000000{i}01_1_front" for i in range(n)],
            "split": "train",
            "img_h": 256,
            "img_w": 176,
            "x": [rng.integers(-1, 176, 18) for _ in range(n)],
            "y": [rng.integers(-1, 256, 18) for _ in range(n)],
            "score": [rng.random(18).astype(np.float32) for _ in range(n)],
            "n_valid": 10,
            "estimator": "test",
            "error": [None] * (n - 1) + ["broken: reason"],
        }
    )


def test_file_id_as_published():
    assert file_id("img/MEN/Denim/id_00000080/01_1_front.jpg") == "imgMENDenimid_0000008001_1_front"
    assert identity_group("img/MEN/Denim/id_00000080/01_1_front.jpg") == "MEN/Denim/id_00000080"
    # Paths to normalise first (doubled or leading slashes, '.', backslashes) group alike.
    for odd in ["img//MEN/./Denim/id_00000080/a.jpg", "img\\MEN\\Denim\\id_00000080\\a.jpg",
                "./img/MEN/Denim/id_00000080/a.jpg"]:  # fmt: skip
        assert identity_group(odd) == "MEN/Denim/id_00000080", odd
    assert identity_group("a.jpg") == ""


def test_parquet_round_trip_keeps_schema(tmp_path):
    df = keypoint_rows()
    write_table(df, tmp_path / "kp.parquet", KEYPOINTS_SCHEMA)
    back = read_table(tmp_path / "kp.parquet", KEYPOINTS_SCHEMA)
    assert list(back.columns) == KEYPOINTS_SCHEMA.names
    np.testing.assert_array_equal(np.stack(back.x), np.stack(df.x))
    assert back.error.isna().tolist() == [True, True, False]


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "t.parquet"
    bad = keypoint_rows()
    bad["x"] = [[1, 2]] * len(bad)  # wrong list length: the write must fail
    with pytest.raises(DataError, match="column 'x'"):
        write_table(bad, target, KEYPOINTS_SCHEMA)
    assert os.listdir(tmp_path) == []
    write_table(keypoint_rows(), target, KEYPOINTS_SCHEMA)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["t.parquet"]


def test_keypoints_csv_round_trip_omits_error_rows(tmp_path):
    df = keypoint_rows()
    write_keypoints_csv(df, tmp_path / "k.csv")
    header = (tmp_path / "k.csv").read_text().splitlines()[0]
    assert header.startswith("file_id,img_h,img_w,p0_x,p0_y,p1_x") and header.endswith(
        "p17_x,p17_y"
    )
    back = read_keypoints_csv(tmp_path / "k.csv")
    assert len(back) == 2
    np.testing.assert_array_equal(np.stack(back.x), np.stack(df.x[:2]))
    np.testing.assert_array_equal(np.stack(back.y), np.stack(df.y[:2]))


def test_keypoints_csv_bad_value_names_row(tmp_path):
    write_keypoints_csv(keypoint_rows(2).assign(error=None), tmp_path / "k.csv")
    text = (tmp_path / "k.csv").read_text().splitlines()
    text[2] = text[2].replace(",256,", ",abc,", 1)
    (tmp_path / "k.csv").write_text("\n".join(text))
    with pytest.raises(DataError, match="row 2, column img_h"):
        read_keypoints_csv(tmp_path / "k.csv")


def test_keypoints_csv_of_error_rows_only_is_its_header(tmp_path):
    write_keypoints_csv(keypoint_rows(3).assign(error="unreadable: x"), tmp_path / "k.csv")
    assert (tmp_path / "k.csv").read_text() == ",".join(KEYPOINT_CSV_COLUMNS) + "\n"


def test_keypoints_csv_empty_value_names_row(tmp_path):
    write_keypoints_csv(keypoint_rows(2).assign(error=None), tmp_path / "k.csv")
    text = (tmp_path / "k.csv").read_text().splitlines()
    text[1] = text[1].replace(",176,", ",,", 1)
    (tmp_path / "k.csv").write_text("\n".join(text))
    with pytest.raises(DataError, match="row 1, column img_w: '' is not an integer"):
        read_keypoints_csv(tmp_path / "k.csv")


def test_imported_keypoints_take_the_last_row_of_a_file_id(tmp_path):
    """An annotations CSV may list an image twice (a corrected row appended): the last
    row counts, images come out sorted by path, and an image without a row is named."""
    from stages.keypoints import keypoints_table_from_csv

    rows = keypoint_rows(3).assign(error=None)
    fixed = rows.iloc[[1]].assign(img_h=300)
    write_keypoints_csv(pd.concat([rows, fixed]), tmp_path / "k.csv")
    images = pd.DataFrame({"path": rows["path"][::-1], "split": ["test", "train", "train"]})
    table = keypoints_table_from_csv(tmp_path / "k.csv", images)
    assert table.schema.equals(KEYPOINTS_SCHEMA)
    got = table.to_pandas()
    assert got["path"].tolist() == sorted(rows["path"]) and got["img_h"].tolist() == [256, 300, 256]
    assert got["split"].tolist() == ["train", "train", "test"]
    np.testing.assert_array_equal(np.stack(got["x"]), np.stack(rows["x"]))
    valid = (np.stack(rows["x"]) >= 0) & (np.stack(rows["y"]) >= 0)
    assert got["n_valid"].tolist() == valid.sum(axis=1).tolist()
    extra = pd.concat([images, pd.DataFrame({"path": ["img/WOMEN/x/id_1/1.jpg"], "split": [""]})])
    with pytest.raises(DataError, match="no keypoints for 1 listed image"):
        keypoints_table_from_csv(tmp_path / "k.csv", extra)


def test_pairs_and_image_list_round_trip(tmp_path):
    paths = ["img/MEN/Denim/id_00000001/01_1_front.jpg", "img/MEN/Denim/id_00000001/01_2_side.jpg"]
    write_image_list(paths, tmp_path / "train_img_list.csv")
    assert (tmp_path / "train_img_list.csv").read_text().splitlines()[0] == "img"
    assert read_image_list(tmp_path / "train_img_list.csv", tmp_path) == paths
    pairs = pd.DataFrame({"imgA": paths, "imgB": paths[::-1]})
    write_pairs_csv(pairs, tmp_path / "p.csv")
    back = read_pairs_csv(tmp_path / "p.csv", tmp_path)
    assert back.imgA.tolist() == paths and back.fidB[0] == file_id(paths[1])
    assert back.group.tolist() == ["MEN/Denim/id_00000001"] * 2
    assert list(back.columns) == PAIRS_SCHEMA.names


def test_paths_escaping_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    assert safe_path(root, "img/a.jpg") == (root / "img/a.jpg").resolve()
    with pytest.raises(DataError, match="absolute"):
        safe_path(root, "/etc/passwd")
    with pytest.raises(DataError, match=r"'\.\.'"):
        safe_path(root, "img/../../secret.jpg")
    (tmp_path / "outside").mkdir()
    (root / "img" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(DataError, match="outside the dataset root"):
        safe_path(root, "img/link/x.jpg")
    # One guard for many paths resolves each folder once and must agree with resolving
    # each path whole, symlinked leaves and folders included.
    (root / "img" / "inner").mkdir()
    (root / "img" / "inner" / "a.jpg").write_bytes(b"")
    (root / "img" / "leaf_in.jpg").symlink_to(root / "img" / "inner" / "a.jpg")
    (root / "img" / "leaf_out.jpg").symlink_to(tmp_path / "outside")
    (root / "img" / "alias").symlink_to(root / "img" / "inner")
    # Twice each: the second call of a plain name takes the known folder's fast path.
    for guard in (RootGuard(root), RootGuard(root, listings=True)):
        for rel in 2 * ["img/inner/a.jpg", "img/./inner//a.jpg", "img/leaf_in.jpg",
                        "img/alias/a.jpg", "img/alias/new.jpg", "img/missing/x.jpg", "img", ".",
                        "./img/inner/b.jpg", "img/alias/inner2/c.jpg"]:  # fmt: skip
            assert guard(rel) == str((root / rel).resolve()), rel
        for rel in 2 * ["img/leaf_out.jpg", "img/link/x.jpg", "img/link/deeper/x.jpg"]:
            with pytest.raises(DataError, match="outside the dataset root"):
                guard(rel)
        for rel in ["/img/inner/a.jpg", "/a.jpg", "img/inner/.."]:
            with pytest.raises(DataError):
                guard(rel)
    # A table's paths are checked column-wise, each folder once: the rows refused must be
    # those a guard refuses path by path, and plain names in clean folders skip the guard.
    rels = ["img/inner/a.jpg", "img/leaf_in.jpg", "img/leaf_out.jpg", "img/link/x.jpg",
            "img/alias/a.jpg", "img/./inner/a.jpg", "img//inner/a.jpg", "img/inner/..",
            "/a.jpg", "a.jpg", "img\\inner\\a.jpg", "s3://other/a.jpg", "img/inner/.", None,
            "img/inner/", "img/missing/x.jpg", "img/link/deeper/x.jpg",
            "img/inner/b.jpg"]  # fmt: skip
    refused = []
    for i, rel in enumerate(rels, start=1):
        try:
            safe_join(root, rel, guard=RootGuard(root, listings=True))
        except DataError:
            refused.append(i)
    assert refused == [3, 4, 8, 9, 12, 14, 17]  # folders named as files pass, as before
    with pytest.raises(DataError) as err:
        check_paths(root, rels, "t.csv")
    assert re.findall(r"row (\d+):", str(err.value)) == [str(i) for i in refused]
    guard = RootGuard(root, listings=True)
    assert guard.unchecked(rels[:1] + rels[-2:]).tolist() == [1]
    # None first, and a name that is not UTF-8 (os.fsdecode's surrogates): checked alone.
    assert guard.unchecked([None, "img/inner/a.jpg"]).tolist() == [0]
    assert guard.unchecked(["img/inner/a.jpg", "img/inner/\udcff.jpg"]).tolist() == [0, 1]
    pd.DataFrame({"imgA": ["img/a.jpg", "../b.jpg"], "imgB": ["/abs.jpg", "img/c.jpg"]}).to_csv(
        tmp_path / "pairs.csv", index=False
    )
    with pytest.raises(DataError) as err:
        read_pairs_csv(tmp_path / "pairs.csv", root)
    assert "row 2" in str(err.value) and "row 3" in str(err.value) and "2 path(s)" in str(err.value)


def test_csv_rows_are_the_bytes_of_the_csv_module_and_pandas():
    import csv
    import io

    from pipeline.core.legacy_csv import append_rows

    for names in (["img/a.jpg", "img/b.jpg"], ["img/a.jpg", "b,c.jpg", 'd"e.jpg', "f\ng.jpg"]):
        df = pd.DataFrame({"imgA": names, "imgB": names[::-1]})
        out = io.BytesIO()
        append_rows(out, {c: df[c].to_numpy(dtype=object) for c in df}, "\n")
        assert out.getvalue() == df.to_csv(index=False, header=False).encode()
        numbers = np.arange(len(names) * 3).reshape(-1, 3) - 1
        out = io.BytesIO()
        columns = {"f": np.array(names, object), **{str(i): numbers[:, i] for i in range(3)}}
        append_rows(out, columns, "\r\n")
        text = io.StringIO(newline="")
        csv.writer(text).writerows([n, *v] for n, v in zip(names, numbers.tolist(), strict=True))
        assert out.getvalue() == text.getvalue().encode()


def test_file_ids_and_identity_groups_column_wise_equal_the_published_ones():
    """Arrow finds the file id and identity folder of plain paths; every other path (a
    backslash, an empty or "." part, no extension, a dot file) goes through the
    one-by-one functions, so the column is the same whatever the paths."""
    import pyarrow as pa

    from pipeline.core.paths import file_id, file_ids, identity_group, identity_groups

    paths = [
        "img/MEN/Denim/id_00000080/01_1_front.jpg", "a.jpg", "img/x/y.b.c", "img/x/.hidden",
        "img/x/noext", "img\\MEN\\a.jpg", "/abs/a.jpg", "img//a.jpg", "./img/a.jpg",
        "img/./a/b.jpg", "a/b.", "img", "MEN/Denim/id_1/a.png", "img/a/..b", "x/.a.b",
        "img/a/b/", None, "imgx/a/b.jpg", "img/a.b/c",
    ]  # fmt: skip
    column = pa.array(paths, pa.string())
    expected = [(None, None) if p is None else (file_id(p), identity_group(p)) for p in paths]
    found = zip(file_ids(column).to_pylist(), identity_groups(column).to_pylist(), strict=True)
    assert list(found) == expected
    plain = pa.array(paths[:1] * 3, pa.string())
    assert file_ids(plain).to_pylist() == ["imgMENDenimid_0000008001_1_front"] * 3
