"""One storage layer for every data location: local paths and `file://`, `s3://` and
`gs://` URIs, on pyarrow.fs. Local files keep what works today (atomic_io's temporary
name and rename, hard links). On object storage a single PUT is atomic and there is no
rename, so final keys are written directly from memory (a failed write leaves no
object), copies are server-side (CopyObject: the dedup that hard links give locally),
and a listing's sizes and mtimes come from LIST calls alone, so an up-to-date check
never reads an object.

S3-compatible servers: `storage.endpoint_override` in the config, else the standard
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; credentials and region from the standard AWS
variables and files (pyarrow's AWS SDK chain), never from the config."""

from __future__ import annotations

import bisect
import contextlib
import datetime
import errno
import functools
import hashlib
import io
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.atomic_io import atomic_path, parquet_bytes, write_bytes_atomic
from pipeline.core.config import StorageConfig, check_endpoint
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.paths import MANGLED_URI, RootGuard, relative_posix
from pipeline.core.paths import relative_under as local_relative_under

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS tools' order
# Read by pyarrow's AWS SDK: a change of any makes a new client (see _s3_filesystem).
_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Local hard links fail across filesystems, on filesystems without them, or past the
# link limit: the copy then is a real copy.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)
_LOCAL = pafs.LocalFileSystem()
# pyarrow filesystem type -> the scheme its URIs are written with.
URI_SCHEMES = {"s3": "s3", "gcs": "gs"}

_configured: StorageConfig | None = None


def configure(cfg: StorageConfig | None) -> None:
    """The storage settings for locations resolved without any (atomic_io's functions,
    code far from the config); the CLI sets the run's once. None: back to the env only."""
    global _configured
    _configured = cfg


class Location(NamedTuple):
    """A file or prefix: the filesystem it is on and the path there (a local path as
    given, or "bucket/key" on S3)."""

    fs: pafs.FileSystem
    path: str

    @property
    def is_local(self) -> bool:
        return self.fs.type_name == "local"

    @property
    def uri(self) -> str:
        """As a user writes it: the local path itself, else scheme://bucket/key."""
        kind = URI_SCHEMES.get(self.fs.type_name, self.fs.type_name)
        return self.path if self.is_local else f"{kind}://{self.path}"

    @property
    def bucket(self) -> str | None:
        return None if self.is_local else self.path.split("/", 1)[0]

    def join(self, *parts: str) -> Location:
        """The location of trusted names under this one (names read from data go through
        safe_join)."""
        if self.is_local:
            return Location(self.fs, os.path.join(self.path, *parts))
        return Location(self.fs, "/".join([self.path, *(p.strip("/") for p in parts)]))

    def __str__(self) -> str:
        return self.uri


class FileState(NamedTuple):
    """One listed file: what an up-to-date check keys on, from the listing alone."""

    path: str  # the file's URI, or its local path
    rel: str  # relative to the listed prefix, POSIX separators
    size: int
    mtime_ns: int | None  # S3: LastModified (whole seconds)


Target = str | os.PathLike | Location


class _Remembered:
    """Object-storage metadata this process has asked for while remembering: recursive
    listings (prefix URI -> its files) and folders' direct children (folder URI -> name
    -> FileInfo). A question about a key is answered from a remembered listing of a
    prefix above it, else from one LIST of its folder, which answers every sibling too:
    the DAG's up-to-date checks ask about dozens of files and folders in a few folders."""

    def __init__(self) -> None:
        # prefix URI -> (its files, their relative paths): sorted, searched by bisection.
        self.trees: dict[str, tuple[list[FileState], list[str]]] = {}
        self.folders: dict[str, dict[str, pafs.FileInfo]] = {}

    def clear(self) -> None:
        self.trees.clear()
        self.folders.clear()

    def remember_tree(self, uri: str, files: list[FileState]) -> list[FileState]:
        self.trees[uri] = (files, [f.rel for f in files])
        return files

    def _held(self, uri: str) -> tuple[str, list[FileState], list[str]] | None:
        """The remembered recursive listing at or above `uri`: (path of `uri` in it, "" for
        its prefix itself; its files; their relative paths)."""
        for prefix, (files, rels) in self.trees.items():
            if uri == prefix:
                return "", files, rels
            if uri.startswith(prefix + "/"):
                return uri[len(prefix) + 1 :], files, rels
        return None

    def files_under(self, loc: Location) -> list[FileState] | None:
        """The files under `loc` from what is remembered; None when that cannot tell."""
        if (held := self._held(loc.uri)) is not None:
            rel, files, rels = held
            if not rel:
                return files
            # Keys under rel/: from rel + "/" up to rel + "0" ("0" sorts right after "/").
            start, end = bisect.bisect_left(rels, rel + "/"), bisect.bisect_left(rels, rel + "0")
            return [f._replace(rel=f.rel[len(rel) + 1 :]) for f in files[start:end]]
        parent, _, name = loc.uri.rpartition("/")
        siblings = self.folders.get(parent)
        if siblings is not None:
            found = siblings.get(name)
            if found is None or found.type != pafs.FileType.Directory:
                return []  # its folder's listing has no such prefix
        return None

    def info(self, loc: Location) -> pafs.FileInfo:
        if (held := self._held(loc.uri)) is not None:
            rel, files, rels = held
            at = bisect.bisect_left(rels, rel)
            if rel and at < len(rels) and rels[at] == rel:
                f = files[at]
                return pafs.FileInfo(loc.path, pafs.FileType.File, size=f.size, mtime_ns=f.mtime_ns)
            below = bisect.bisect_left(rels, rel + "/" if rel else "")
            inside = below < len(rels) and (not rel or rels[below].startswith(rel + "/"))
            kind = pafs.FileType.Directory if inside else pafs.FileType.NotFound
            return pafs.FileInfo(loc.path, kind)
        folder, _, name = loc.path.rpartition("/")
        if not folder:  # a bucket itself
            return loc.fs.get_file_info(loc.path)
        siblings = self.children(Location(loc.fs, folder))
        return siblings.get(name) or pafs.FileInfo(loc.path, pafs.FileType.NotFound)

    def children(self, loc: Location) -> dict[str, pafs.FileInfo]:
        """Name -> FileInfo of the files and folders directly under `loc` (one LIST)."""
        uri = loc.uri
        if uri not in self.folders:
            selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
            self.folders[uri] = {
                PurePosixPath(i.path).name: i for i in loc.fs.get_file_info(selector)
            }
        return self.folders[uri]


_memo: _Remembered | None = None


@contextlib.contextmanager
def remembering(on: bool = True) -> Iterator[None]:
    """Within: object-storage metadata (listings, existence, sizes) is asked for once and
    remembered, and a write through this layer forgets it all. `on=False` suspends an
    outer remembering (code whose other processes write, such as a stage and its Ray
    workers) and forgets it on the way out. Local paths are always asked afresh."""
    global _memo
    outer = _memo
    _memo = (outer or _Remembered()) if on else None
    try:
        yield
    finally:
        _memo = outer
        if outer is not None and not on:
            outer.clear()


def _written() -> None:
    if _memo is not None:
        _memo.clear()


def _location_of(target) -> Location | None:
    """`target` itself when a Location, an object_path.ObjectPath's, else None."""
    if isinstance(target, Location):
        return target
    loc = getattr(target, "location", None)
    return loc if isinstance(loc, Location) else None


def scheme(target: Target) -> str | None:
    """The URI scheme of `target` in lower case, or None for a plain local path."""
    if (loc := _location_of(target)) is not None:
        return None if loc.is_local else URI_SCHEMES[loc.fs.type_name]
    found = _SCHEME.match(os.fspath(target)) if isinstance(target, str) else None
    return found.group(1).lower() if found else None


def is_local(target: Target) -> bool:
    """A local path or file:// URI (decided without building any client)."""
    return scheme(target) in (None, "file")


def endpoint(storage_cfg: StorageConfig | None = None) -> str | None:
    """The S3 endpoint URL: the config key, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
    else None (AWS itself)."""
    cfg = storage_cfg or _configured
    if cfg is not None and cfg.endpoint_override:
        return cfg.endpoint_override
    for var in ENDPOINT_VARS:
        if value := os.environ.get(var, "").strip():
            try:
                return check_endpoint(value)
            except ValueError as exc:
                raise ConfigError(f"environment variable {var}: {exc}") from None
    return None


def local_state_dir(root: Target, storage_cfg: StorageConfig | None = None) -> Path:
    """Where this host keeps the local state of the object-storage root `root` (run lock,
    content cache): a folder per root under storage.cache_dir."""
    cfg = storage_cfg or _configured or StorageConfig()
    base = cfg.cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "posetransfer"
    )
    uri = resolve(root, cfg).uri
    return Path(base) / "roots" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def worker_env() -> dict[str, str]:
    """What Ray workers need to reach the same S3 endpoint and region as this process (the
    config's settings, which workers on other nodes never read): AWS variables for their
    environment. Credentials stay each node's own (its variables, profile or role)."""
    cfg = _configured or StorageConfig()
    env = {"AWS_ENDPOINT_URL_S3": url} if (url := endpoint(cfg)) else {}
    return env | ({"AWS_REGION": cfg.region} if cfg.region else {})


def s3_filesystem(storage_cfg: StorageConfig | None = None) -> pafs.S3FileSystem:
    """The S3 client for these settings and the current AWS variables (one per set)."""
    cfg = storage_cfg or _configured or StorageConfig()
    aws_env = tuple(os.environ.get(var) for var in _AWS_VARS)
    return _s3_filesystem(endpoint(cfg), cfg.region, aws_env)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(url: str | None, region: str | None, aws_env: tuple) -> pafs.S3FileSystem:
    # allow_delayed_open: an object that fits one part is a single PutObject on close
    # (else CreateMultipartUpload, UploadPart, CompleteMultipartUpload).
    options: dict = {"allow_delayed_open": True, "region": region}
    if url is not None:
        options |= {"endpoint_override": url, "scheme": urlsplit(url).scheme}
    return pafs.S3FileSystem(**options)


def _s3_path(uri: str) -> str:
    """bucket/key of an s3:// or gs:// URI; refuses what object storage would keep under
    a surprising key."""
    kind, _, path = uri.partition("://")
    path = path.rstrip("/")
    parts = path.split("/")
    if not parts[0]:
        raise DataError(f"{uri!r}: a {kind}:// URI needs a bucket ({kind}://bucket/prefix)")
    bad = [p for p in parts[1:] if p in ("", ".", "..")]
    if bad:
        raise DataError(
            f"{uri!r}: empty, '.' or '..' parts are refused in S3 keys (S3 keeps them "
            "literally, so the key would not be the one meant)"
        )
    return path


@functools.lru_cache(maxsize=1)
def _gcs_filesystem() -> pafs.GcsFileSystem:
    # The client's own default retries an unreachable service for 15 minutes.
    return pafs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=30))


def resolve(target: Target, storage_cfg: StorageConfig | None = None) -> Location:
    """The filesystem and path of a local path, file:// URI or s3:// URI."""
    if (loc := _location_of(target)) is not None:
        return loc
    text = os.fspath(target)
    kind = scheme(text)
    if kind is None:
        if not isinstance(target, str) and MANGLED_URI.match(text):
            raise DataError(
                f"{text!r} looks like a URI that went through a Path (which keeps one '/'); "
                "pass URIs as strings"
            )
        return Location(_LOCAL, text)
    if kind == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"{text!r}: file:// URIs name no host (file:///abs/path)")
        return Location(_LOCAL, unquote(parts.path))
    if kind == "s3":
        return Location(s3_filesystem(storage_cfg), _s3_path(text))
    if kind in ("gs", "gcs"):
        # pyarrow's GCS client: credentials from GOOGLE_APPLICATION_CREDENTIALS or the
        # metadata server. Not tested here (no GCS server offline); S3 is.
        return Location(_gcs_filesystem(), _s3_path(text))
    raise DataError(
        f"{text!r}: storage scheme {kind!r} is not supported; use a local path, "
        "file:///path, s3://bucket/prefix or gs://bucket/prefix"
    )


def location_problem(key: str, target: str, storage_cfg: StorageConfig | None = None) -> str | None:
    """Why the data location `key` = `target` is unusable, as one paragraph that names the
    URI and what to set (None: usable): a scheme this layer does not serve, a bucket that
    is not there, credentials the server refuses, an endpoint that does not answer. One
    HEAD of the bucket; local paths pass (their checks are the stages')."""
    if is_local(target):
        return None
    try:
        loc = resolve(target, storage_cfg)
        info = loc.fs.get_file_info(loc.bucket)
    except DataError as exc:
        return f"{key}: {exc}"
    except OSError as exc:
        where = endpoint(storage_cfg) or "AWS S3"
        text = str(exc)
        if "ACCESS_DENIED" in text or "FORBIDDEN" in text.upper():
            hint = (
                f"the server at {where} refused the credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to keys that may read and write it"
            )
        elif "NETWORK_CONNECTION" in text:
            hint = (
                f"no S3 server answered at {where}: set storage.endpoint_override (or "
                "AWS_ENDPOINT_URL) to the server's URL, e.g. http://127.0.0.1:8333"
            )
        else:
            hint = "the server answered with an error"
        return f"{key} {target!r}: {hint} ({text})"
    if info.type == pafs.FileType.NotFound:
        return (
            f"{key} {target!r}: bucket {loc.bucket!r} does not exist at "
            f"{endpoint(storage_cfg) or 'AWS S3'}; create it or correct the URI"
        )
    return None


def absolute(target: Target, storage_cfg: StorageConfig | None = None) -> str:
    """What workers on any node are given for a location: a local path made absolute
    (symlinks resolved), else the URI."""
    loc = resolve(target, storage_cfg)
    return str(Path(loc.path).resolve()) if loc.is_local else loc.uri


def join(base: str | os.PathLike, *parts: str) -> str:
    """`parts` under `base` (unchecked: for the pipeline's own names; safe_join for
    names read from data), as a URI when `base` is one."""
    loc = _location_of(base)
    text = loc.uri if loc is not None else os.fspath(base)
    if is_local(text) and scheme(text) is None:
        return os.path.join(text, *parts)
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])


def safe_join(root: Target, rel: str, where: str = "", guard: RootGuard | None = None) -> Target:
    """`rel` under the dataset root `root`, refusing absolute paths, `..`, URIs (another
    bucket or scheme) and, locally, symlinks leading outside (paths.RootGuard; pass one
    `guard` of the root to check many paths). Returns a Location for a Location, else a
    string: an s3:// URI, or a local path (file:// too)."""
    if guard is not None and isinstance(rel, str) and ":" not in rel and _location_of(root) is None:
        return guard(rel)  # a local root, and no scheme without ':': the guard checks it all
    at = f" ({where})" if where else ""
    root = _location_of(root) or root
    base = root.uri if isinstance(root, Location) else os.fspath(root).rstrip("/")
    if isinstance(rel, str) and scheme(rel) is not None:
        raise DataError(
            f"path {rel!r} names its own location{at}: paths must be relative to the "
            f"dataset root {base} (no other bucket or scheme)"
        )
    if is_local(root):
        full = (guard or RootGuard(resolve(root).path))(rel, where)
        return Location(_LOCAL, full) if isinstance(root, Location) else full
    if scheme(base) not in ("s3", "gs", "gcs"):
        raise DataError(f"{base!r}: storage scheme {scheme(base)!r} is not supported")
    _s3_path(base)  # the root itself must be a usable S3 location
    # The checks of paths.RootGuard, on keys: S3 has no symlinks and no normalisation.
    parts = [p for p in PurePosixPath(relative_posix(rel, where)).parts if p != "."]
    if not parts:
        raise DataError(f"path {rel!r} names the dataset root itself{at}, not a file in it")
    if isinstance(root, Location):
        return root.join(*parts)
    return "/".join([base, *parts])


def relative_under(target: Target, root: Target) -> str | None:
    """`target` relative to `root` (POSIX separators) when it lies inside it (same
    filesystem, same bucket), else None; "." for the root itself."""
    if is_local(target) != is_local(root):
        return None
    if is_local(target):
        return local_relative_under(resolve(target).path, resolve(root).path)
    t = resolve(target).uri
    r = resolve(root).uri
    if t == r:
        return "."
    return t[len(r) + 1 :] if t.startswith(r + "/") else None


def info(target: Target, storage_cfg: StorageConfig | None = None) -> pafs.FileInfo:
    """What is at `target`: a file (with size and mtime), a folder or non-empty prefix,
    or nothing. S3: a HEAD (and a LIST when no object has the key); while remembering,
    from a listing asked for once."""
    loc = resolve(target, storage_cfg)
    if _memo is None or loc.is_local:
        return loc.fs.get_file_info(loc.path)
    return _memo.info(loc)


def children(target: Target, storage_cfg: StorageConfig | None = None) -> list[pafs.FileInfo]:
    """The files and folders directly under `target`, sorted by path (S3: LIST with a
    delimiter)."""
    loc = resolve(target, storage_cfg)
    if _memo is None or loc.is_local:
        selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
        found = loc.fs.get_file_info(selector)
    else:
        found = list(_memo.children(loc).values())
    return sorted(found, key=lambda i: i.path)


def exists(target: Target, storage_cfg: StorageConfig | None = None) -> bool:
    """A file, folder or non-empty prefix is there."""
    return info(target, storage_cfg).type != pafs.FileType.NotFound


def stat(target: Target, storage_cfg: StorageConfig | None = None) -> FileState | None:
    """The size and mtime of one file (S3: a HEAD), or None when there is none."""
    loc = resolve(target, storage_cfg)
    found = info(loc)
    if found.type != pafs.FileType.File:
        return None
    return FileState(loc.uri, PurePosixPath(found.path).name, found.size, found.mtime_ns)


def list_files(
    prefix: Target, recursive: bool = True, storage_cfg: StorageConfig | None = None
) -> list[FileState]:
    """The files under `prefix` with their sizes and mtimes, sorted by relative path; on
    S3 from LIST calls only (1,000 keys each), no object read or HEAD. A missing prefix
    lists nothing."""
    loc = resolve(prefix, storage_cfg)
    if _memo is not None and not loc.is_local:
        files = _memo.files_under(loc)
        if files is not None:
            return files if recursive else [f for f in files if "/" not in f.rel]
        if recursive:
            return _memo.remember_tree(loc.uri, _list_files(loc, recursive=True))
        return sorted(
            (
                FileState(Location(loc.fs, i.path).uri, name, i.size, i.mtime_ns)
                for name, i in _memo.children(loc).items()
                if i.type == pafs.FileType.File
            ),
            key=lambda f: f.rel,
        )
    return _list_files(loc, recursive)


def root_guard(root: Target) -> RootGuard | None:
    """One RootGuard (listing mode) of a local dataset root, for safe_join over many paths;
    None for object storage."""
    return RootGuard(resolve(root).path, listings=True) if is_local(root) else None


def file_names(folder: Target, storage_cfg: StorageConfig | None = None) -> set[str]:
    """The names of the files directly in `folder` (none when it is missing): locally one
    directory read, without the stat per file of list_files; on S3 its LIST calls."""
    loc = resolve(folder, storage_cfg)
    if not loc.is_local:
        return {f.rel for f in list_files(loc, recursive=False)}
    try:
        with os.scandir(loc.path) as entries:
            return {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _list_files(loc: Location, recursive: bool) -> list[FileState]:
    base = loc.path.rstrip("/") or "/"
    selector = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
    start = len(base.rstrip("/")) + 1
    files = [
        FileState(
            Location(loc.fs, info.path).uri,
            info.path[start:].replace(os.sep, "/"),
            info.size,
            info.mtime_ns,
        )
        for info in loc.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    ]
    return sorted(files, key=lambda f: f.rel)


def read_bytes(target: Target, storage_cfg: StorageConfig | None = None) -> bytes:
    """The whole file (S3: one GET). A missing one raises FileNotFoundError."""
    loc = resolve(target, storage_cfg)
    if loc.is_local:
        return Path(loc.path).read_bytes()
    with loc.fs.open_input_stream(loc.path) as stream:
        return stream.read()


def readable(target: Target, storage_cfg: StorageConfig | None = None):
    """What a reader that takes a path or a file object (pandas, numpy, torch, PIL) opens:
    a local file's path as it is, an object read whole (one GET) into memory. A missing
    one raises FileNotFoundError when read."""
    loc = resolve(target, storage_cfg)
    return loc.path if loc.is_local else io.BytesIO(read_bytes(loc))


def _put(loc: Location, data: bytes | pa.Buffer) -> None:
    """One upload of bytes already in memory: a single PUT (multipart beyond one part),
    so the object appears whole or not at all. Never stream a producer into an S3
    output stream: closing it, even on an error, completes the upload with what it got."""
    _written()
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(data)


def write_bytes(
    target: Target, data: bytes | pa.Buffer, storage_cfg: StorageConfig | None = None
) -> None:
    """Write a whole file atomically: local, a temporary name renamed over the target
    (disk full: DiskFullError); object storage, a single PUT of the final key."""
    loc = resolve(target, storage_cfg)
    if loc.is_local:
        write_bytes_atomic(loc.path, bytes(data) if isinstance(data, pa.Buffer) else data)
    else:
        _put(loc, data)


def delete(target: Target, storage_cfg: StorageConfig | None = None) -> bool:
    """Remove one file; False when there was none."""
    loc = resolve(target, storage_cfg)
    _written()
    try:
        loc.fs.delete_file(loc.path)
    except FileNotFoundError:
        return False
    return True


def _link_local(src: str, dst: str) -> bool:
    """Hard-link `src` over `dst` atomically (link to a temporary name, then rename);
    False where the filesystem cannot link them."""
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(src, tmp)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    try:
        os.replace(tmp, dst)
    finally:
        # Renaming a link onto another link of the same file is a no-op that leaves `tmp`.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def copy(
    src: Target, dst: Target, link: bool = False, storage_cfg: StorageConfig | None = None
) -> None:
    """Copy one file, replacing `dst` atomically. Within one S3 endpoint: a server-side
    CopyObject (no bytes through this machine; the dedup of object storage). Local to
    local: a hard link when `link` and the filesystem allows, else a copy by temporary
    name. Across filesystems: read whole, then written as above."""
    a, b = resolve(src, storage_cfg), resolve(dst, storage_cfg)
    if not a.is_local and not b.is_local and a.fs.equals(b.fs):
        _written()
        a.fs.copy_file(a.path, b.path)
        return
    if a.is_local and b.is_local:
        if link and _link_local(a.path, b.path):
            return
        os.makedirs(os.path.dirname(os.path.abspath(b.path)), exist_ok=True)
        with atomic_path(b.path, needed=os.path.getsize(a.path)) as tmp:
            shutil.copyfile(a.path, tmp)
        return
    write_bytes(b, read_bytes(a))


def move(src: Target, dst: Target, storage_cfg: StorageConfig | None = None) -> None:
    """Move a file or folder (prefix) to `dst`. Local: a rename (shutil.move across
    filesystems). Object storage has no rename: each object is copied server-side, then
    the originals are deleted, so an interrupted move leaves every object in one place
    or both, never none."""
    a, b = resolve(src, storage_cfg), resolve(dst, storage_cfg)
    if a.is_local and b.is_local:
        os.makedirs(os.path.dirname(os.path.abspath(b.path)), exist_ok=True)
        shutil.move(a.path, b.path)
        return
    found = info(a)
    files = (
        [FileState(a.uri, "", found.size, found.mtime_ns)]
        if found.type == pafs.FileType.File
        else list_files(a)
    )
    for f in files:
        copy(f.path, b.join(f.rel) if f.rel else b, storage_cfg=storage_cfg)
    for f in files:
        delete(f.path, storage_cfg)


def write_table(table: pa.Table, target: Target, storage_cfg: StorageConfig | None = None) -> None:
    """Write a Parquet table atomically (locally by temporary name; on S3 serialised in
    memory, then one PUT). The bytes are the same either way."""
    loc = resolve(target, storage_cfg)
    if loc.is_local:
        with atomic_path(loc.path, needed=table.nbytes) as tmp:
            pq.write_table(table, tmp)
        return
    _put(loc, parquet_bytes(table))


def read_table(
    target: Target, columns: list[str] | None = None, storage_cfg: StorageConfig | None = None
) -> pa.Table:
    """A whole Parquet table (S3: one GET, then parsed in memory)."""
    loc = resolve(target, storage_cfg)
    source = loc.path if loc.is_local else pa.BufferReader(read_bytes(loc))
    return pq.read_table(source, columns=columns)


def read_metadata(target: Target, storage_cfg: StorageConfig | None = None) -> pq.FileMetaData:
    """A Parquet file's footer only (S3: a HEAD and ranged GETs of the file's end)."""
    loc = resolve(target, storage_cfg)
    if loc.is_local:
        return pq.read_metadata(loc.path)
    with loc.fs.open_input_file(loc.path) as handle:
        return pq.read_metadata(handle)
