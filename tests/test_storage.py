"""The storage layer on every kind of location: a local path, a file:// URI and s3:// on a
real S3 server (SeaweedFS, one per session: tests/s3_server.py). On S3 the requests are
recorded by a proxy where the contract is about them: a write is one PUT, a copy is
server-side, a listing is LIST calls only."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from s3_server import RequestLog
from test_tables import keypoint_rows

from pipeline.core import storage
from pipeline.core.atomic_io import read_table, table_damage, write_bytes_atomic, write_table
from pipeline.core.config import StorageConfig, config_from_dict
from pipeline.core.errors import ConfigError, DataError, UnreadableTableError
from pipeline.core.schemas import KEYPOINTS_SCHEMA

KINDS = ["local", "file", "s3"]


@pytest.fixture
def aws_env(monkeypatch):
    """The standard AWS variables cleared (so nothing of the host's leaks in); returns a
    setter for a server's."""
    for var in (*storage.ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(storage, "_configured", None)

    def use(server) -> None:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture(params=KINDS)
def root(request, tmp_path, aws_env) -> str:
    """A fresh, empty dataset root of each kind (on S3: a new prefix of the bucket)."""
    if request.param == "local":
        return str(tmp_path / "data")
    if request.param == "file":
        return (tmp_path / "data").as_uri()
    server = request.getfixturevalue("s3_server")
    aws_env(server)
    test = request.node.name.replace("[", "-").rstrip("]")
    return f"s3://{server.bucket}/{test}-{uuid.uuid4().hex[:6]}"


def recorded(server, proxy: RequestLog) -> StorageConfig:
    """Settings that send the storage layer's requests through the recording proxy."""
    return StorageConfig(endpoint_override=proxy.endpoint, region=server.region)


def test_bytes_round_trip_and_overwrite(root):
    target = storage.join(root, "img", "a b", "x.bin")
    assert not storage.exists(target) and storage.stat(target) is None
    storage.write_bytes(target, b"first")
    assert storage.read_bytes(target) == b"first"
    storage.write_bytes(target, b"second, longer")
    assert storage.read_bytes(target) == b"second, longer"
    assert storage.exists(target) and storage.exists(storage.join(root, "img"))
    assert storage.stat(target).size == len(b"second, longer")
    # atomic_io's writer takes the same locations; nothing but the final files is left.
    write_bytes_atomic(storage.join(root, "y.bin"), b"y")
    assert [f.rel for f in storage.list_files(root)] == ["img/a b/x.bin", "y.bin"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing.bin"))


def test_a_failed_write_keeps_the_old_table_and_leaves_no_other_file(root):
    target = storage.join(root, "tables", "kp.parquet")
    write_table(keypoint_rows(), target, KEYPOINTS_SCHEMA)
    before = storage.read_bytes(target)
    bad = keypoint_rows(4)
    bad["x"] = [[1, 2]] * len(bad)  # wrong list length: the write must fail
    with pytest.raises(DataError, match="column 'x'"):
        write_table(bad, target, KEYPOINTS_SCHEMA)
    assert storage.read_bytes(target) == before
    assert [f.rel for f in storage.list_files(root)] == ["tables/kp.parquet"]


def test_an_s3_write_is_one_put_of_the_final_key(s3_server, aws_env):
    aws_env(s3_server)
    key = f"{s3_server.bucket}/one-put/{uuid.uuid4().hex}/x.bin"
    with RequestLog(s3_server.endpoint) as proxy:
        cfg = recorded(s3_server, proxy)
        storage.write_bytes(f"s3://{key}", os.urandom(50_000), storage_cfg=cfg)
        assert proxy.requests == [("PUT", f"/{key}")]


def test_list_gives_sizes_and_mtimes_from_the_listing(root):
    sizes = {"a.bin": 3, "sub/b.bin": 1000, "sub/deeper/c.bin": 0, "z.bin": 70_000}
    for rel, size in sizes.items():
        storage.write_bytes(storage.join(root, *rel.split("/")), b"\x01" * size)
    files = storage.list_files(root)
    assert {f.rel: f.size for f in files} == sizes
    assert all(f.mtime_ns is not None and f.mtime_ns > 0 for f in files)
    assert [f.path for f in files] == [
        storage.resolve(storage.join(root, f.rel)).uri for f in files
    ]
    assert [f.rel for f in storage.list_files(root, recursive=False)] == ["a.bin", "z.bin"]
    assert storage.list_files(storage.join(root, "nothing-here")) == []


def test_an_s3_listing_is_list_calls_only(s3_server, aws_env):
    aws_env(s3_server)
    prefix = f"s3://{s3_server.bucket}/listing-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        storage.write_bytes(storage.join(prefix, f"d{i % 2}", f"{i}.bin"), b"x" * (i + 1))
    with RequestLog(s3_server.endpoint) as proxy:
        files = storage.list_files(prefix, storage_cfg=recorded(s3_server, proxy))
        assert [f.size for f in files] == [1, 3, 5, 2, 4]  # d0/0, d0/2, d0/4, d1/1, d1/3
        assert proxy.requests and all(
            method == "GET" and "list-type=2" in target for method, target in proxy.requests
        ), proxy.requests


def test_copy(root, tmp_path):
    src = storage.join(root, "src", "a.bin")
    storage.write_bytes(src, b"payload")
    for link in (False, True):
        dst = storage.join(root, "dst", f"link-{link}.bin")
        storage.copy(src, dst, link=link)
        assert storage.read_bytes(dst) == b"payload"
    if storage.is_local(root):
        ino = [
            os.stat(storage.resolve(storage.join(root, p)).path).st_ino
            for p in ("src/a.bin", "dst/link-False.bin", "dst/link-True.bin")
        ]
        assert ino[0] != ino[1] and ino[0] == ino[2]  # a hard link only where asked
    # Across filesystems, both ways.
    local = str(tmp_path / "elsewhere" / "a.bin")
    storage.copy(src, local)
    storage.copy(local, storage.join(root, "back.bin"))
    assert storage.read_bytes(storage.join(root, "back.bin")) == b"payload"


def test_an_s3_copy_is_server_side(s3_server, aws_env):
    aws_env(s3_server)
    base = f"{s3_server.bucket}/copy-{uuid.uuid4().hex[:6]}"
    storage.write_bytes(f"s3://{base}/a.bin", os.urandom(100_000))
    with RequestLog(s3_server.endpoint) as proxy:
        cfg = recorded(s3_server, proxy)
        storage.copy(f"s3://{base}/a.bin", f"s3://{base}/b.bin", link=True, storage_cfg=cfg)
        assert proxy.requests == [("PUT", f"/{base}/b.bin")]  # CopyObject: no GET
    assert storage.read_bytes(f"s3://{base}/b.bin") == storage.read_bytes(f"s3://{base}/a.bin")


def test_parquet_round_trip_through_atomic_io(root):
    df = keypoint_rows()
    target = storage.join(root, "tables", "kp.parquet")
    write_table(df, target, KEYPOINTS_SCHEMA)
    back = read_table(target, KEYPOINTS_SCHEMA)
    assert list(back.columns) == KEYPOINTS_SCHEMA.names
    np.testing.assert_array_equal(np.stack(back.x), np.stack(df.x))
    assert table_damage(target) is None
    assert storage.read_table(target, columns=["path"]).num_rows == len(df)
    cut = storage.join(root, "tables", "cut.parquet")
    storage.write_bytes(cut, storage.read_bytes(target)[:-100])
    assert table_damage(cut) is not None
    with pytest.raises(UnreadableTableError, match="cut.parquet"):
        read_table(cut, KEYPOINTS_SCHEMA)
    with pytest.raises(FileNotFoundError, match="table not found"):
        read_table(storage.join(root, "tables", "none.parquet"))
    assert table_damage(storage.join(root, "tables", "none.parquet")) is not None


def test_a_table_has_the_same_bytes_locally_and_on_s3(s3_server, aws_env, tmp_path):
    aws_env(s3_server)
    local, remote = tmp_path / "kp.parquet", f"s3://{s3_server.bucket}/same/{uuid.uuid4().hex}"
    write_table(keypoint_rows(), local, KEYPOINTS_SCHEMA)
    write_table(keypoint_rows(), remote, KEYPOINTS_SCHEMA)
    assert storage.read_bytes(remote) == local.read_bytes()


@pytest.mark.parametrize("root", ["s3://bucket/data", "/srv/data"])
@pytest.mark.parametrize(
    "rel, why",
    [
        ("../x.jpg", "escapes"),
        ("img/../../x.jpg", "escapes"),
        ("/etc/passwd", "absolute"),
        ("C:/x.jpg", "absolute"),
        ("s3://other-bucket/x.jpg", "own location"),
        ("s3://bucket/data/x.jpg", "own location"),
        ("file:///etc/passwd", "own location"),
        ("  ", "empty"),
    ],
)
def test_safe_join_refuses_what_leaves_the_root(root, rel, why):
    with pytest.raises(DataError, match=why):
        storage.safe_join(root, rel, where="row 3")


def test_safe_join_keeps_what_stays_inside():
    assert (
        storage.safe_join("s3://bucket/data/", "img\\a/./b.jpg") == "s3://bucket/data/img/a/b.jpg"
    )
    assert storage.relative_under("s3://bucket/data/img/a.jpg", "s3://bucket/data") == "img/a.jpg"
    assert storage.relative_under("s3://bucket/database/a.jpg", "s3://bucket/data") is None
    assert storage.relative_under("s3://other/data/a.jpg", "s3://bucket/data") is None
    assert storage.relative_under("/srv/data/a.jpg", "s3://bucket/data") is None


def test_gs_uris_keep_their_scheme():
    # pyarrow's GCS client is built without a request: no GCS server is reachable here.
    loc = storage.resolve("gs://bucket/data/img/a.jpg")
    assert loc.uri == "gs://bucket/data/img/a.jpg" and storage.scheme(loc) == "gs"
    assert storage.safe_join("gs://bucket/data", "img/a.jpg") == "gs://bucket/data/img/a.jpg"


def test_unusable_uris_are_refused():
    for uri, why in [
        ("ftp://bucket/x", "not supported"),
        ("gs:///x", "needs a bucket"),
        ("s3:///x", "needs a bucket"),
        ("s3://bucket/a/../b", "refused"),
        ("s3://bucket/a//b", "refused"),
        (Path("s3://bucket/x"), "went through a Path"),
        ("file://host/x", "no host"),
    ]:
        with pytest.raises(DataError, match=why):
            storage.resolve(uri)
    for root in ("ftp://bucket/data", "s3://bucket/a/../b"):
        with pytest.raises(DataError, match="not supported|refused"):
            storage.safe_join(root, "img/x.jpg")


def test_endpoint_from_the_config_key_then_the_environment(s3_server, aws_env, monkeypatch):
    aws_env(s3_server)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    key = f"s3://{s3_server.bucket}/endpoint-{uuid.uuid4().hex[:6]}/x.bin"
    cfg = config_from_dict({"storage": {"endpoint_override": s3_server.endpoint}}).storage
    storage.write_bytes(key, b"by the config key", storage_cfg=cfg)
    assert storage.endpoint(cfg) == s3_server.endpoint
    assert storage.endpoint() is None  # AWS itself
    storage.configure(cfg)  # the process's default (the CLI sets the run's)
    assert storage.read_bytes(key) == b"by the config key"
    storage.configure(None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint + "/")
    assert storage.read_bytes(key) == b"by the config key"
    # The service-specific variable wins over the general one; the config key over both.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert storage.endpoint() == "http://127.0.0.1:1"
    assert storage.endpoint(cfg) == s3_server.endpoint


def test_credentials_come_from_the_aws_variables(s3_server, aws_env, monkeypatch):
    aws_env(s3_server)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(OSError, match="(?i)signature|denied|access"):
        storage.write_bytes(f"s3://{s3_server.bucket}/denied.bin", b"x")


def test_bad_endpoints_name_the_setting(monkeypatch):
    with pytest.raises(ConfigError, match="storage.endpoint_override"):
        config_from_dict({"storage": {"endpoint_override": "localhost:8333"}})
    with pytest.raises(ConfigError, match="storage.region"):
        config_from_dict({"storage": {"region": ""}})
    assert config_from_dict({}).storage.endpoint_override is None
    monkeypatch.setattr(storage, "_configured", None)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://example.com")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        storage.endpoint()


@pytest.mark.parametrize(
    "case, want",
    [
        ("wrong keys", "refused the credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("no bucket", "bucket 'no-such-bucket' does not exist at http://127.0.0.1:"),
        ("no server", "no S3 server answered at http://127.0.0.1:1: set storage.endpoint_override"),
        ("unknown scheme", "storage scheme 'ftp' is not supported"),
    ],
)
def test_an_unusable_location_stops_the_cli_before_anything_is_written(
    s3_server, aws_env, monkeypatch, tmp_path, case, want
):
    from click.testing import CliRunner

    from cli.main import cli

    aws_env(s3_server)
    data = f"s3://{s3_server.bucket}/data"
    if case == "wrong keys":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "no bucket":
        data = "s3://no-such-bucket/data"
    elif case == "no server":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    elif case == "unknown scheme":
        data = "ftp://bucket/data"
    out = tmp_path / "out"
    args = ["--set", f"dataset.root={data}", "--set", f"output.root={out}", "run"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert "nothing was started or written" in res.output and want in res.output, res.output
    assert "dataset.root" in res.output and repr(data) in res.output
    assert not out.exists()
    # Asked with the server's own settings: some cases spoilt the environment's.
    listing = pafs.FileSelector(f"{s3_server.bucket}/data", allow_not_found=True, recursive=True)
    assert s3_server.filesystem().get_file_info(listing) == []


def test_an_object_path_answers_as_a_local_path_does(s3_server, aws_env, tmp_path):
    """The pathlib calls the layouts use, on S3 and on the same tree on disk."""
    from pipeline.core.object_path import ObjectPath, data_path

    aws_env(s3_server)
    uri = f"s3://{s3_server.bucket}/objpath-{uuid.uuid4().hex[:6]}"
    roots = {"s3": data_path(uri), "local": data_path(str(tmp_path / "tree"))}
    assert isinstance(roots["s3"], ObjectPath) and isinstance(roots["local"], Path)
    for root in roots.values():
        (root / "a" / "b").mkdir(parents=True, exist_ok=True)  # nothing to make on S3
        (root / "a" / "x.npz").write_bytes(b"1")
        (root / "a" / "b" / "y.npz").write_bytes(b"22")
        (root / "a" / "z.json").write_text("{}")
    for kind, root in roots.items():
        folder = root / "a"
        assert folder.is_dir() and not folder.is_file() and folder.exists(), kind
        assert (folder / "x.npz").is_file() and not (folder / "nope.npz").exists(), kind
        assert sorted(p.name for p in folder.glob("*.npz")) == ["x.npz"], kind
        assert sorted(p.name for p in folder.glob("*/*.npz")) == ["y.npz"], kind
        assert sorted(p.name for p in folder.iterdir()) == ["b", "x.npz", "z.json"], kind
        assert (folder / "b" / "y.npz").read_bytes() == b"22", kind
        assert (folder / "x.npz").stat().st_size == 1, kind
        assert (folder / "x.npz").with_suffix(".json").name == "x.json", kind
        assert (folder / "x.npz").parent == folder and folder.parent == root, kind
        (folder / "x.npz").unlink()
        (folder / "x.npz").unlink(missing_ok=True)
        assert not (folder / "x.npz").exists(), kind
    # A URI kept whole on the way through; the bucket is its own top.
    assert str(roots["s3"] / "a") == f"{uri}/a"
    bucket = data_path(f"s3://{s3_server.bucket}")
    assert bucket.parent == bucket
    # Not a path for open(): a call never moved onto the storage layer fails loudly.
    with pytest.raises(TypeError):
        open(roots["s3"] / "a" / "z.json")  # noqa: SIM115


def test_remembering_lists_each_prefix_once_answers_alike_and_forgets_on_a_write(
    s3_server, aws_env
):
    """While remembering, questions about keys and folders are answered from one LIST per
    folder (no HEAD), the same answers as asked afresh; a write forgets them, and so does
    a suspended block (what other processes may have written meanwhile)."""
    aws_env(s3_server)
    base = f"s3://{s3_server.bucket}/memo-{uuid.uuid4().hex[:6]}"
    for rel in ("a/x.npz", "a/b/y.npz", "a/z.json", "c.bin"):
        storage.write_bytes(storage.join(base, rel), rel.encode())

    def answers(cfg: StorageConfig) -> list:
        at = [storage.resolve(storage.join(base, rel), cfg) for rel in ("a/x.npz", "a/nope", "a/b")]
        return [
            [storage.info(loc).type for loc in at],
            storage.stat(at[0]).size,
            [(f.rel, f.size) for f in storage.list_files(storage.join(base, "a"), storage_cfg=cfg)],
            [f.rel for f in storage.list_files(at[2], storage_cfg=cfg)],
            [f.rel for f in storage.list_files(at[2], recursive=False, storage_cfg=cfg)],
            storage.exists(at[2].join("y.npz")),
            [i.path.rsplit("/", 1)[1] for i in storage.children(storage.join(base, "a"))],
        ]

    with RequestLog(s3_server.endpoint) as proxy:
        cfg = recorded(s3_server, proxy)
        fresh = answers(cfg)
        asked_fresh = len(proxy.requests)
        proxy.requests.clear()
        with storage.remembering():
            remembered = answers(cfg)
            again = answers(cfg)
        requests = list(proxy.requests)
    assert remembered == again == fresh
    assert fresh[0] == [pafs.FileType.File, pafs.FileType.NotFound, pafs.FileType.Directory]
    assert fresh[3:5] == [["y.npz"], ["y.npz"]]
    assert all("list-type=2" in target for _, target in requests), requests
    prefixes = [(t.split("prefix=")[1].split("&")[0], "delimiter" in t) for _, t in requests]
    assert len(prefixes) == len(set(prefixes)) < asked_fresh, requests

    new = storage.join(base, "a", "new.bin")
    with storage.remembering():
        assert not storage.exists(new)
        storage.write_bytes(new, b"1")
        assert storage.exists(new)  # the write forgot what was listed
        with storage.remembering(False):
            storage.resolve(new).fs.delete_file(storage.resolve(new).path)  # as a worker would
        assert not storage.exists(new)  # the suspended block's end forgot it too
