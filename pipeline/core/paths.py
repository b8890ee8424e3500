"""File ids and paths: the published file id, identity folders, checkpoint order, and
dataset-root path checks that refuse absolute paths, `..` and symlinks leading outside."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import DataError

# A URI that went through pathlib (s3://b/k -> s3:/b/k): refused, never written as a folder.
MANGLED_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]")


def file_id(rel_path: str) -> str:
    """The published file id: relative path, extension dropped, separators removed
    (img/MEN/Denim/id_00000080/01_1_front.jpg -> imgMENDenimid_0000008001_1_front)."""
    stem = os.path.splitext(rel_path.replace("\\", "/"))[0]
    return stem.replace("/", "")


# Paths whose file id and identity group Arrow finds column-wise: no backslash, no empty
# or "." part, a file name that does not start with a dot and has an extension. Others
# (rare) go through file_id and identity_group one by one.
_PLAIN_PATH = r"^([^/\\]+/)*[^./\\][^/\\]*\.[^./\\]*$"
_ODD_PART = r"(^|/)\.?(/|$)"


def _plain_rows(paths: pa.Array) -> np.ndarray:
    plain = pc.and_(
        pc.match_substring_regex(paths, _PLAIN_PATH),
        pc.invert(pc.match_substring_regex(paths, _ODD_PART)),
    )
    return pc.fill_null(plain, False).to_numpy(zero_copy_only=False)


def _by_rows(paths: pa.Array, fast: pa.Array, slow) -> pa.Array:
    """`fast` where the path is plain, `slow(path)` elsewhere (nulls stay null)."""
    plain = _plain_rows(paths)
    if plain.all():
        return fast
    out = fast.to_pylist()
    for i in np.flatnonzero(~plain):
        p = paths[int(i)].as_py()
        out[i] = None if p is None else slow(p)
    return pa.array(out, pa.string())


def file_ids(paths: pa.Array) -> pa.Array:
    """file_id of each path, column-wise (a million paths: a Python call each took 1.5 s)."""
    stem = pc.replace_substring_regex(paths, r"\.[^./]*$", "")
    return _by_rows(paths, pc.replace_substring(stem, "/", ""), file_id)


def identity_groups(paths: pa.Array) -> pa.Array:
    """identity_group of each path, column-wise."""
    folder = pc.if_else(
        pc.match_substring(paths, "/"), pc.replace_substring_regex(paths, r"/[^/]*$", ""), ""
    )
    group = pc.replace_substring_regex(folder, r"^img(/|$)", "")
    return _by_rows(paths, group, identity_group)


def checkpoint_sort_key(ckpt_id: str) -> tuple:
    """Order checkpoint ids (iterations) numerically, non-numeric ids after them by name."""
    return (0, int(ckpt_id), "") if ckpt_id.isdigit() else (1, 0, ckpt_id)


def identity_group(rel_path: str) -> str:
    """Identity folder of an image: img/MEN/Denim/id_00000080/x.jpg -> MEN/Denim/id_00000080."""
    norm = rel_path.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or "" in parts or "." in parts:
        parts = PurePosixPath(norm).parts  # the rare path to normalise first
    if parts and parts[0] == "img":
        parts = parts[1:]
    return "/".join(parts[:-1])


def relative_posix(rel: str, where: str = "") -> str:
    """`rel` with POSIX separators, refused (DataError) when empty, absolute or climbing
    out with '..': the checks of a path read from data that need no filesystem."""
    at = f" ({where})" if where else ""
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"empty path{at}")
    norm = rel.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise DataError(
            f"absolute path {rel!r} refused{at}: paths must be relative to the dataset root"
        )
    if ".." in norm.split("/"):
        raise DataError(f"path {rel!r} escapes the dataset root{at}: '..' is not allowed")
    return norm


class RootGuard:
    """Resolves paths under one dataset root, refusing absolute paths, `..` and symlinks
    that lead outside it. Each folder is resolved once: a table's 50,000 paths share a
    few thousand folders, and resolving every path (a stat per component) was most of the
    time of importing or pairing a DeepFashion-size table. With `listings`, a plain file
    name in a folder seen before costs a dictionary lookup."""

    def __init__(self, root: str | os.PathLike, listings: bool = False):
        """`listings`: for many paths, learn from one listing of each folder whether it
        holds any symlink (and its real path from its parent's); without, a path costs a
        realpath of its folder and a lstat, and nothing is listed (a folder may hold a
        million entries)."""
        self.root = os.path.realpath(root)
        self._listings = listings
        self._under = self.root.rstrip(os.sep) + os.sep
        # normalised relative folder -> (real path, whether it holds symlinks (None: not
        # known), whether it lies inside the root)
        self._folders: dict[str, tuple[str, bool | None, bool]] = {}

    def __call__(self, rel: str, where: str = "") -> str:
        if isinstance(rel, str):
            folder, _, leaf = rel.rpartition("/")
            # Keys are normalised relative folders ("." for the root, so that "/x" matches
            # none): a match makes `folder` clean as written.
            known = self._folders.get(folder)
            # A known folder inside the root without any symlink: nothing to resolve.
            if known is not None and known[2] and known[1] is False:
                if leaf not in ("", ".", "..") and "\\" not in leaf and rel[1:2] != ":":
                    return os.path.join(known[0], leaf)
        at = f" ({where})" if where else ""
        norm = relative_posix(rel, where)
        # Without '..', normalising is lexical and exact: it drops '.' and doubled slashes.
        folder, leaf = os.path.split(os.path.normpath(norm))
        real, has_links, _ = self._folder(folder or ".")
        full = real if leaf == "." else os.path.join(real, leaf)
        # realpath(folder/leaf) is realpath(folder)/leaf unless the leaf is a symlink; in a
        # folder with symlinks it is asked of the filesystem, not matched by name (a
        # case-insensitive one finds the link "a.jpg" for "A.JPG").
        if has_links is not False and os.path.islink(full):
            full = os.path.realpath(full)
        if not self._inside(full):
            raise DataError(
                f"path {rel!r} resolves outside the dataset root {self.root}{at} (symlink?)"
            )
        return full

    def unchecked(self, paths: list) -> np.ndarray:
        """The indexes of `paths` that __call__ must check one by one: all but plain file
        names in clean folders inside the root that hold no symlink, which need no check
        beyond their folder's. Found column-wise, each folder checked once: a million
        listed images share about 150,000 folders, and a call per path was 9 us."""
        try:
            col = pa.array(paths, pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):
            # Not all strings, or names that are not UTF-8: each is checked in its turn.
            return np.arange(len(paths))
        # [folder, leaf], or [leaf] for a path without a folder (a regex took 6 times as long)
        split = pc.split_pattern(col, "/", max_splits=1, reverse=True)
        starts = split.offsets.to_numpy()
        parts, counts = split.flatten(), np.diff(starts)
        leaf = parts.take(pa.array(starts[1:] - 1, mask=counts == 0))  # null: None
        folder = parts.take(pa.array(starts[:-1], mask=counts != 2))  # null: no folder
        plain = pc.and_(
            pc.invert(pc.match_substring_regex(col, r"[\\:]")),
            pc.invert(pc.is_in(leaf, pa.array(["", ".", ".."]))),
        )
        encoded = pc.dictionary_encode(folder)
        clean = np.array([self._clean(f) for f in encoded.dictionary.to_pylist()] + [False])
        # A path without a folder (its index null) takes the last entry: checked alone.
        in_clean = clean[encoded.indices.fill_null(len(clean) - 1).to_numpy()]
        fast = pc.fill_null(plain, False).to_numpy(zero_copy_only=False) & in_clean
        return np.flatnonzero(~fast)

    def _clean(self, folder: str) -> bool:
        """Whether a folder as written is normalised, inside the root and without symlinks:
        its files resolve to it plus their names."""
        parts = folder.split("/")
        if folder.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return False
        _, links, inside = self._folder(folder)
        return inside and links is False

    def _inside(self, full: str) -> bool:
        return full == self.root or full.startswith(self._under)

    def _folder(self, folder: str) -> tuple[str, bool | None, bool]:
        """A normalised folder's real path, whether it holds any symlink (one listing, no
        stat per entry; None when not known) and whether it lies inside the root. Its
        real path is its parent's plus its name unless the parent holds symlinks and the
        filesystem says the name is one."""
        known = self._folders.get(folder)
        if known is None and not self._listings:
            real = os.path.realpath(os.path.join(self.root, folder))
            known = self._folders[folder] = (real, None, self._inside(real))
        elif known is None:
            if folder == ".":
                real = self.root
            else:
                parent, name = os.path.split(folder)
                parent_real, parent_links, _ = self._folder(parent or ".")
                real = os.path.join(parent_real, name)
                if parent_links is not False and os.path.islink(real):
                    real = os.path.realpath(real)
            known = self._folders[folder] = (real, _holds_symlinks(real), self._inside(real))
        return known


def _holds_symlinks(folder: str) -> bool | None:
    """Whether a real folder holds any symlink (each directory entry says what it is);
    False when the folder does not exist, None when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return any(e.is_symlink() for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        return None


def safe_path(root: str | os.PathLike, rel: str, where: str = "") -> Path:
    """Resolve `rel` under the dataset root, refusing absolute paths, `..` and symlinks
    that lead outside it. `where` names the offending row in the error."""
    return Path(RootGuard(root)(rel, where))


def relative_under(path: str | os.PathLike, root: str | os.PathLike) -> str | None:
    """`path` relative to `root` (POSIX separators) when it lies inside it, else None.
    Stored paths are kept relative to their root, so a copied tree keeps its records and
    never points back into the original."""
    full = os.path.abspath(path)
    base = os.path.abspath(root)
    if full == base:
        return "."
    if not full.startswith(base.rstrip(os.sep) + os.sep):
        return None
    return Path(os.path.relpath(full, base)).as_posix()


def check_paths(root: str | os.PathLike, paths: list[str], source: str) -> None:
    """Check every path of a table/CSV; one error lists all bad rows (1-based data rows)."""
    from pipeline.core import storage  # which imports this module

    bad = []
    guard = storage.root_guard(root)
    rows = range(len(paths)) if guard is None else guard.unchecked(paths)
    for i in rows:
        try:
            storage.safe_join(root, paths[i], guard=guard)
        except DataError as exc:
            bad.append(f"row {i + 1}: {exc}")
    if bad:
        shown = "\n  ".join(bad[:20]) + (
            f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        )
        raise DataError(
            f"{source}: {len(bad)} path(s) outside the dataset root refused:\n  {shown}"
        )
