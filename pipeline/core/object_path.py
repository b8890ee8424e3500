"""Paths that may be object-store keys: `data_path(root)` is a plain pathlib.Path for a
local root (so local behaviour is exactly what it was) and an ObjectPath for an s3:// one.
ObjectPath speaks the part of pathlib the layouts and stages use (`/`, name, parent,
exists, glob, read/write), on the storage layer, so one layout serves both.

It is deliberately not os.PathLike: an `open()`, `os.path` or `shutil` call that was
never moved onto the storage layer fails loudly on it instead of writing a local folder
named "s3:"."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pyarrow.fs as pafs

from pipeline.core import storage
from pipeline.core.config import StorageConfig


class ObjectStat(NamedTuple):
    st_size: int
    st_mtime_ns: int | None


class ObjectPath:
    """An object key or prefix on object storage, addressed like a pathlib.Path. Folders
    are prefixes: they exist while a key lies under them, and mkdir makes nothing."""

    __slots__ = ("location",)

    def __init__(self, location: storage.Location):
        self.location = location

    # -- naming ----------------------------------------------------------------------
    def __str__(self) -> str:
        return self.location.uri

    def __repr__(self) -> str:
        return f"ObjectPath({self.location.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.location.uri == self.location.uri

    def __hash__(self) -> int:
        return hash(self.location.uri)

    def __lt__(self, other: ObjectPath) -> bool:
        return self.location.uri < other.location.uri

    def __truediv__(self, part: str | os.PathLike) -> ObjectPath:
        return ObjectPath(self.location.join(*PurePosixPath(os.fspath(part)).parts))

    def joinpath(self, *parts: str) -> ObjectPath:
        out = self
        for part in parts:
            out = out / part
        return out

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(self.location.path)

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> ObjectPath:
        parent = str(self._pure.parent)
        # The bucket is the top: its parent is itself, as "/" is for a local path.
        return self if parent in (".", "") else ObjectPath(self.location._replace(path=parent))

    @property
    def parts(self) -> tuple[str, ...]:
        return self._pure.parts

    def with_suffix(self, suffix: str) -> ObjectPath:
        return ObjectPath(self.location._replace(path=str(self._pure.with_suffix(suffix))))

    def with_name(self, name: str) -> ObjectPath:
        return ObjectPath(self.location._replace(path=str(self._pure.with_name(name))))

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        return self._pure.relative_to(other._pure)

    def resolve(self) -> ObjectPath:
        return self  # keys have no symlinks and no relative form

    def absolute(self) -> ObjectPath:
        return self

    # -- state -----------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return storage.info(self.location)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> ObjectStat:
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"no object {self}")
        return ObjectStat(info.size, info.mtime_ns)

    def iterdir(self) -> list[ObjectPath]:
        infos = storage.children(self.location)
        return [ObjectPath(self.location._replace(path=i.path)) for i in infos]

    def glob(self, pattern: str) -> list[ObjectPath]:
        """The files under this prefix whose relative key matches `pattern` part by part
        (pathlib's rules, `**` for any depth), from LIST calls only."""
        depth = None if "**" in pattern else len(PurePosixPath(pattern).parts)
        found = []
        for f in storage.list_files(self.location, recursive=depth != 1):
            rel = PurePosixPath(f.rel)
            if depth is not None and len(rel.parts) != depth:
                continue
            if rel.match(pattern) if depth is not None else fnmatch.fnmatch(f.rel, pattern):
                found.append(self / f.rel)
        return found

    def rglob(self, pattern: str) -> list[ObjectPath]:
        return [p for p in self.glob("**/*") if fnmatch.fnmatch(p.name, pattern)]

    # -- contents --------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        return storage.read_bytes(self.location)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        storage.write_bytes(self.location, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a prefix exists once a key is written under it."""

    def rmdir(self) -> None:
        """Nothing to remove: a prefix is gone with its last key."""

    def unlink(self, missing_ok: bool = False) -> None:
        if not storage.delete(self.location) and not missing_ok:
            raise FileNotFoundError(f"no object {self}")


DataPath = Path | ObjectPath


def data_path(target: str | os.PathLike, storage_cfg: StorageConfig | None = None) -> DataPath:
    """A local path (a file:// URI's path) as a Path, an object-store URI as an ObjectPath."""
    if isinstance(target, ObjectPath):
        return target
    loc = storage.resolve(target, storage_cfg)
    return Path(loc.path) if loc.is_local else ObjectPath(loc)
