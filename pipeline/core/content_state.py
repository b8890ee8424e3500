"""Content digests of input files with a stat-keyed cache, so a rerun reads only the files
whose (size, mtime, inode) changed, and a file whose mtime alone changed digests the same.
A folder's listing digest is also kept under its stat signature (every file's relative
path, size, mtime and inode), so that an unchanged folder of a million files is known from
one stat per file without looking up any file's row. The cache is one SQLite file under
the output root's state folder."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import zlib
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.core import storage
from pipeline.core.tree_signature import (
    folder_record,
    record_folder,
    scan_folder,
    signature_of,
    tree_records,
)

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def file_stat(path: str | os.PathLike) -> tuple[int, int, int]:
    """(size, mtime_ns, inode): changes whenever the file's bytes may have (the stages
    replace files atomically, so a rewrite is a new inode)."""
    if not storage.is_local(path):  # an object: its HEAD (no inode; a PUT is a new mtime)
        found = storage.stat(path)
        if found is None:
            raise FileNotFoundError(f"no object {path}")
        return (found.size, found.mtime_ns, 0)
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class ContentCache:
    """(path, size, mtime_ns, inode) -> content digest. Use as a context manager: new digests
    are saved on exit. `readonly` never writes (a dry run changes nothing on disk). Rows
    are looked up in SQLite as they are asked for, a folder's at a time when a tree is
    walked: memory does not grow with the million paths a cache may hold."""

    def __init__(self, db: str | os.PathLike, readonly: bool = False):
        self.db = Path(db)
        self.readonly = readonly
        # Digests computed since the last save, found again before they are saved.
        self._new: dict[str, tuple] = {}
        self._trees: dict[str, Listing] = {}
        self._tree_digests: dict[str, str] = {}
        # Folder -> (stat signature, listing digest, files) learnt since the last save.
        self._new_trees: dict[str, tuple[str, str, int]] = {}
        # Folder -> (stat signature, listing digest) of the last walk, and the listings a
        # stage recorded (`keep_listing`): a folder whose signature is still the same is
        # not walked with digests again after a stage that did not write in it.
        # With what the walk found changed since a recorded listing (Listing.since), so
        # that a later stage asking what changed since that same listing need not compare.
        self._walked: dict[str, tuple[str, str, tuple | None]] = {}
        self._kept: dict[str, tuple[str, str, tuple | None, Callable[[], dict | None]]] = {}
        self._signatures: dict[str, str] = {}  # taken since the last forget_trees
        # Folder -> its folders' records, taken with the signature; and those of the last
        # walk to save, with its listing digest. A listing recorded with that digest is
        # brought up to date by scanning only the folders whose record changed.
        # Each folder's records are held joined in one string (`_joined`).
        self._records: dict[str, str] = {}
        self._new_records: dict[str, tuple[str, str]] = {}
        self._bases: dict[str, dict[str, Callable[[], dict | None]]] = {}
        self.files_read = 0
        self._conn = None
        if readonly:
            if self.db.exists():
                self._conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            return
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.db)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, inode INTEGER, digest TEXT)"
        )
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS tree_signatures (root TEXT PRIMARY KEY, signature TEXT, "
            "digest TEXT, files INTEGER)"
        )
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS tree_records (root TEXT PRIMARY KEY, digest TEXT, "
            "records BLOB)"
        )

    def __enter__(self) -> ContentCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, save: bool = True) -> None:
        if save:
            self.save()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def save(self) -> None:
        """Write the digests computed since the last save (a read-only cache keeps them in
        memory only)."""
        pending = self._new or self._new_trees or self._new_records
        if pending and self._conn is not None and not self.readonly:
            rows = [(path, *row) for path, row in self._new.items()]
            self._conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", rows)
            trees = [(root, *row) for root, row in self._new_trees.items()]
            self._conn.executemany(
                "INSERT OR REPLACE INTO tree_signatures VALUES (?, ?, ?, ?)", trees
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO tree_records VALUES (?, ?, ?)",
                [(root, digest, zlib.compress(joined.encode(), 1))
                 for root, (digest, joined) in self._new_records.items()],
            )  # fmt: skip
            self._conn.commit()
            self._new, self._new_trees, self._new_records = {}, {}, {}

    def digest(self, path: str | os.PathLike) -> str:
        """The content digest of a file; read only when its stat differs from the cached one.
        On object storage, the listed_digest of its HEAD: no object is read."""
        if not storage.is_local(path):
            if (found := storage.stat(path)) is None:
                raise FileNotFoundError(f"no object {path}")
            return listed_digest(found.path, found.size, found.mtime_ns)
        key = os.path.abspath(path)
        return self._local_digest(key, file_stat(key))

    def _local_digest(
        self, key: str, stat: tuple[int, int, int], known: tuple | None = None
    ) -> str:
        """The digest of the local file at the absolute path `key` with `stat` (`known`: its
        cached row when the caller fetched it already)."""
        known = known or self._new.get(key) or self._cached(key)
        if known is not None and tuple(known[:3]) == stat:
            return known[3]
        digest = file_digest(key)
        self.files_read += 1
        self._new[key] = (*stat, digest)
        return digest

    def _cached(self, key: str) -> tuple | None:
        if self._conn is None:
            return None
        return self._conn.execute(
            "SELECT size, mtime_ns, inode, digest FROM files WHERE path = ?", (key,)
        ).fetchone()

    def _cached_in(self, parent: str, folders: list[str]) -> dict[str, tuple]:
        """The cached rows of the files directly in `folders`, sorted sub-folders of
        `parent` (or `parent` itself): one range query on the primary key, the depth
        filtered in SQLite ('0' follows the separator '/')."""
        if self._conn is None:
            return {}
        base = parent.rstrip(os.sep) + os.sep
        depth = 0 if folders == [parent] else 1  # separators after `base`
        # Paths sort by "name/", not by name ("a" < "a-b" but "a-b/x" < "a/x"): the range
        # runs from the least folder prefix to past the greatest.
        starts = [f.rstrip(os.sep) + os.sep for f in folders]
        rows = self._conn.execute(
            "SELECT path, size, mtime_ns, inode, digest FROM files WHERE path > ? AND path < ? "
            "AND length(substr(path, ?)) - length(replace(substr(path, ?), ?, '')) = ?",
            (min(starts), max(starts) + chr(0x10FFFF), len(base) + 1, len(base) + 1, os.sep,
             depth),
        )  # fmt: skip
        return {r[0]: r[1:] for r in rows}

    def state(self, path) -> Folder | str:
        """What an input is now: a folder (its listing digest, and relative path -> digest
        when asked), a file's digest, or "missing". On object storage from listings alone
        (asked once per folder while the storage layer is remembering, as a DAG run's
        checks are)."""
        if storage.is_local(path):
            if os.path.isdir(path):
                return Folder(self, path)
            return self.digest(path) if os.path.isfile(path) else "missing"
        found = storage.info(path)
        if found.type == pafs.FileType.File:
            return listed_digest(str(path), found.size, found.mtime_ns)
        if found.type == pafs.FileType.Directory and self.tree(path):
            return Folder(self, path)
        return "missing"

    def tree(self, root: str | os.PathLike) -> Listing:
        """Relative path -> digest of every file under `root` (hidden names skipped); on
        object storage from LIST calls alone. A local folder is walked once until
        `forget_trees` (several stages read the images: one walk of a million files)."""
        if not storage.is_local(root):
            key = str(root)
            if key not in self._trees:
                self._trees[key] = Listing(
                    (f.rel, listed_digest(f.path, f.size, f.mtime_ns))
                    for f in storage.list_files(root)
                    if not any(part.startswith(".") for part in f.rel.split("/"))
                )
            return self._trees[key]
        key = os.path.abspath(root)
        if key not in self._trees and (kept := self._kept_listing(key)) is not None:
            self._trees[key] = kept
        if key not in self._trees:
            self._listing_since(key)
        if key not in self._trees:
            out, records = Listing(), []
            for rel, files, cached in self._scan(key, ""):
                records.append(folder_record(rel, [(name, stat) for name, _, stat in files]))
                for name, path, stat in files:
                    out[rel + name] = self._local_digest(
                        path, stat, self._new.get(path) or cached.get(path)
                    )
            self._walked_now(key, out, records)
        return self._trees[key]

    def _walked_now(self, key: str, out: Listing, records: list[str]) -> None:
        """Remember the listing `out` of the local folder `key`, walked now, with its
        folders' `records`."""
        self._trees[key] = out
        self._tree_digests[key] = out.digest
        self._signatures[key] = signature_of(records)
        self._records[key] = _joined(records)
        self._new_trees[key] = (self._signatures[key], out.digest, len(out))
        self._new_records[key] = (out.digest, self._records[key])
        self._walked[key] = (self._signatures[key], out.digest, out.since)

    def listed_before(
        self, root: str | os.PathLike, digest: str, load: Callable[[], dict | None]
    ) -> None:
        """A listing of the local folder `root` recorded earlier (a stage's last run), whose
        listing digest is `digest` and which `load` reads back: when the folder has changed
        since, `tree` takes the files of its unchanged folders from it."""
        if storage.is_local(root):
            self._bases.setdefault(os.path.abspath(root), {})[digest] = load

    def _listing_since(self, key: str) -> None:
        """`tree` of `key` from a listing recorded earlier (`listed_before`) whose folders'
        records are known: the files of folders whose record is the same are taken from
        it, the others are scanned (and their files digested through the cache). Adding
        1% of a million images scans 1% of the folders, not all of them."""
        old = self._stored_records(key)
        load = self._bases.get(key, {}).get(old[0]) if old else None
        if load is None or (previous := load()) is None:
            return
        before = set(old[1])
        self._signature(key)
        now = self._records[key].split("\n")
        same = [r for r in now if r in before]
        kept = {record_folder(r) for r in same}
        out, before_here, now_here = Listing(), {}, {}  # the last two: of the other folders
        for rel, digest in previous.items():
            if rel[: rel.rfind(os.sep) + 1] in kept:
                out[rel] = digest
            else:
                before_here[rel] = digest
        del previous
        records = same
        for record in now:
            if record in before:
                continue
            rel = record_folder(record)
            folder = os.path.join(key, rel.rstrip(os.sep)) if rel else key
            found = scan_folder(folder)
            if found is None:  # gone since the signature was taken
                continue
            files = sorted(found[0])
            records.append(folder_record(rel, files))
            cached = self._cached_in(folder, [folder])
            for name, stat in files:
                path = os.path.join(folder, name)
                now_here[rel + name] = self._local_digest(
                    path, stat, self._new.get(path) or cached.get(path)
                )
        out.update(now_here)
        common = now_here.keys() & before_here.keys()
        out.since = (old[0], (
            sum(1 for k in common if now_here[k] != before_here[k]),
            len(now_here) - len(common),
            len(before_here) - len(common),
        ))  # fmt: skip
        self._walked_now(key, out, records)

    def _stored_records(self, key: str) -> tuple[str, list[str]] | None:
        """(listing digest, folders' records) of the folder's last walk."""
        if key in self._new_records:
            digest, joined = self._new_records[key]
            return digest, joined.split("\n")
        if self._conn is None:
            return None
        try:
            row = self._conn.execute(
                "SELECT digest, records FROM tree_records WHERE root = ?", (key,)
            ).fetchone()
        except sqlite3.OperationalError:  # a cache from before records, opened read-only
            return None
        return (row[0], zlib.decompress(row[1]).decode().split("\n")) if row else None

    def keep_listing(self, root: str | os.PathLike, load: Callable[[], dict | None]) -> None:
        """A stage recorded the listing of the local folder `root` as last walked: `load`
        reads it back, for `tree` to reuse while the folder's stat signature is the one it
        was walked with (the DAG's later stages ask what changed in the images: a million
        files, walked with a cached row each, took tens of seconds)."""
        if not storage.is_local(root):
            return  # object storage: listed once per run, the listing kept in memory
        key = os.path.abspath(root)
        if key in self._walked:
            self._kept[key] = (*self._walked[key], load)

    def _kept_listing(self, key: str) -> Listing | None:
        # Kept after use: the stage after the next may ask again.
        signature, digest, since, load = self._kept.get(key, (None, None, None, None))
        if signature is None or self._signature(key) != signature or (files := load()) is None:
            return None
        listing = Listing(files)
        listing.since = since
        listing.__dict__["digest"] = digest  # the cached_property, known: not hashed again
        self._tree_digests[key] = digest
        return listing

    def since(self, root: str | os.PathLike) -> tuple[str, tuple[int, int, int]] | None:
        """`Listing.since` of `tree(root)`; for a listing a stage recorded this run
        (`keep_listing`) and still current, known without reading it back (the images'
        listing at a million files: seconds)."""
        key = os.path.abspath(root) if storage.is_local(root) else str(root)
        signature, _, since, _ = self._kept.get(key, (None, None, None, None))
        if key not in self._trees and signature is not None and self._signature(key) == signature:
            return since
        return self.tree(root).since

    def _signature(self, key: str, files: int | None = None) -> str:
        """The folder's stat signature now (taken once until `forget_trees`), by several
        processes when it is known to hold PARALLEL_FILES or more."""
        if key not in self._signatures:
            processes = min(os.cpu_count() or 1, MAX_PROCESSES)
            known = files if files is not None else (self._known_tree(key) or (0, 0, 0))[2]
            if known < PARALLEL_FILES:
                processes = 1  # starting processes costs more than it saves
            records = tree_records(key, processes)
            self._signatures[key] = signature_of(records)
            self._records[key] = _joined(records)
        return self._signatures[key]

    def tree_digest(self, root: str | os.PathLike) -> str:
        """The listing digest of `tree(root)`. A local folder whose stat signature is the
        one its digest was recorded with is not listed with digests: one stat per file, no
        file's cached row looked up."""
        if not storage.is_local(root):
            return self.tree(root).digest
        key = os.path.abspath(root)
        if key not in self._tree_digests:
            known = self._new_trees.get(key) or self._known_tree(key)
            if known is not None and self._signature(key, known[2]) == known[0]:
                self._tree_digests[key] = known[1]
            if key not in self._tree_digests:
                self.tree(key)
        return self._tree_digests[key]

    def _known_tree(self, key: str) -> tuple[str, str, int] | None:
        if self._conn is None:
            return None
        try:
            return self._conn.execute(
                "SELECT signature, digest, files FROM tree_signatures WHERE root = ?", (key,)
            ).fetchone()
        except sqlite3.OperationalError:  # a cache from before signatures, opened read-only
            return None

    def forget_trees(self, written: list | None = None) -> None:
        """Walk folders again when next asked: something may have written there. With
        `written` (what a stage is about to write: files and folders), only the folders
        that hold one of them or lie inside one: the images a stage reads but never writes
        keep their signature (at a million files, seconds per stage). Listings are let go
        whatever was written (a million files' listing is hundreds of MB; the stage needs
        the memory, and `keep_listing` reads a recorded one back when asked)."""
        self._trees.clear()
        for known in (self._tree_digests, self._signatures, self._records):
            for key in list(known):
                if written is None or not storage.is_local(key) or _touched(key, written):
                    del known[key]

    def _scan(self, folder: str, rel: str, cached=None):
        """(rel, [(name, path, stat)], cached rows) of each folder under `folder`, in
        os.walk's order and with its choices (a folder's files by name, then its
        sub-folders; hidden names and symlinked folders skipped), with one stat per file:
        a million-image tree is walked in seconds. The cached rows of the files of
        SIBLINGS sub-folders come from one query, made when first asked."""
        found = scan_folder(folder)
        if found is None:  # gone or unreadable: os.walk passes over it the same way
            return
        files, folders = found
        base = folder + os.sep
        yield (
            rel,
            [(name, base + name, stat) for name, stat in sorted(files)],
            cached or _Fetched(lambda: self._cached_in(folder, [folder])),
        )
        folders.sort()
        for start in range(0, len(folders), SIBLINGS):
            chunk = [base + name for name in folders[start : start + SIBLINGS]]
            rows = _Fetched(lambda c=chunk: self._cached_in(folder, c))
            for path in chunk:
                yield from self._scan(path, rel + os.path.basename(path) + os.sep, rows)


def _joined(records: list[str]) -> str:
    """Records kept past a walk, as one string: a walk's records are small strings made
    between its listing's, and kept one by one they would pin the memory of the whole
    listing after it is let go (a million files: about 600 MB that Python's allocator
    could not hand back)."""
    return "\n".join(records)


def _touched(folder: str, written: list) -> bool:
    """`folder` holds one of the `written` paths, is one, or lies inside one."""
    return any(
        storage.relative_under(w, folder) is not None
        or storage.relative_under(folder, w) is not None
        for w in written
    )


class Folder:
    """A folder as an input: its listing digest (`ContentCache.tree_digest`), and its
    listing (relative path -> digest) made only when asked for: to say what changed, or to
    record it once a stage has run."""

    def __init__(self, cache: ContentCache, root):
        self._cache, self.root = cache, root

    @cached_property
    def digest(self) -> str:
        return self._cache.tree_digest(self.root)

    @cached_property
    def listing(self) -> Listing:
        return self._cache.tree(self.root)

    def changes_since(self, digest: str) -> tuple[int, int, int] | None:
        """(changed, added, removed) files since the listing whose digest is `digest`,
        when the listing now was made from it (`ContentCache.listed_before`); else None."""
        listing = self.__dict__.get("listing")
        since = listing.since if listing is not None else self._cache.since(self.root)
        return since[1] if since and since[0] == digest else None

    def forget(self) -> None:
        """Let go of the listing (made again if asked for)."""
        self.__dict__.pop("listing", None)


# A folder known to hold this many files has its signature taken by several processes.
PARALLEL_FILES = 100_000
MAX_PROCESSES = 8

# Sibling folders whose files' cached rows one query fetches: a million images in 150,000
# identity folders cost 300 queries, not 150,000, and hold 512 folders' rows at a time.
SIBLINGS = 512


class _Fetched:
    """Rows fetched when first asked for."""

    def __init__(self, fetch):
        self._fetch, self._rows = fetch, None

    def get(self, key: str) -> tuple | None:
        if self._rows is None:
            self._rows = self._fetch()
        return self._rows.get(key)


def listed_digest(uri: str, size: int, mtime_ns: int | None) -> str:
    """What an object-store file stands for in up-to-date checks: its URI, size and
    modification time as a listing gives them (its content would cost a GET per object)."""
    return hashlib.blake2b(f"{uri}|{size}|{mtime_ns}".encode(), digest_size=16).hexdigest()


class Listing(dict):
    """A folder's files (relative path -> digest) whose digest as a whole
    (`listing_digest`) is computed once."""

    # (digest of the listing this one was made from, (changed, added, removed) files)
    since: tuple[str, tuple[int, int, int]] | None = None

    @cached_property
    def digest(self) -> str:
        return listing_digest(self)


def listing_digest(files: dict[str, str]) -> str:
    """One digest for a listing of (relative path -> content digest)."""
    h = hashlib.blake2b(digest_size=16)
    names = sorted(files)
    for start in range(0, len(names), DIGEST_ROWS):  # one update per block: fewer calls
        block = names[start : start + DIGEST_ROWS]
        h.update("".join(f"{rel}\0{files[rel]}\n" for rel in block).encode())
    return h.hexdigest()


DIGEST_ROWS = 65_536
