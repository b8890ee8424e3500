"""The stat signature of a local folder tree: one digest of every file's relative path,
size, mtime and inode (what a content digest is cached under), from directory entries and
one stat per file, no file read. A record per folder, sorted: the same digest whichever
process walked which sub-folder, so that a million-file tree is walked by several
processes (a stat is a system call; one Python process makes about 120,000 a second here).
Run as a script it reads [folder, relative path] pairs as JSON from stdin and writes their
records as JSON: a worker process that imports nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

# Sub-folders found before the walk is shared out: several per process, for balance.
SHARES_PER_PROCESS = 8
# A folder found then holding this many files has its files' stats shared out too.
SPLIT_FILES = 20_000


def folder_record(rel: str, files: list[tuple[str, tuple[int, int, int]]]) -> str:
    """One folder's record: its path relative to the root and a digest of its files'
    (name, (size, mtime_ns, inode)), whatever their order."""
    lines = sorted(f"{name}\0{s[0]}\0{s[1]}\0{s[2]}\n" for name, s in files)
    return f"{rel}\0{hashlib.blake2b(''.join(lines).encode(), digest_size=16).hexdigest()}"


def signature_of(records: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(records)).encode(), digest_size=16).hexdigest()


def scan_folder(folder: str) -> tuple[list, list[str]] | None:
    """(files as (name, stat), sub-folder names) of one folder, with the walk's choices:
    hidden names, symlinked folders and symlinks to nothing skipped, symlinked files
    followed; None when it is gone or unreadable."""
    found = list_folder(folder)
    if found is None:
        return None
    names, folders = found
    return stat_files(folder, names), folders


def list_folder(folder: str) -> tuple[list[str], list[str]] | None:
    """(names of its files and of whatever else is not a folder, sub-folder names) from
    its directory entries alone (no stat per entry), with `scan_folder`'s choices of
    folders; None when it is gone or unreadable."""
    names, folders = [], []
    try:
        with os.scandir(folder) as found:
            entries = [e for e in found if not e.name.startswith(".")]
    except OSError:
        return None
    for entry in entries:
        if not entry.is_dir():
            names.append(entry.name)
        elif not entry.is_symlink():
            folders.append(entry.name)
    return names, folders


def stat_files(folder: str, names: list[str]) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, (size, mtime_ns, inode)) of each name in `folder` that is a file now
    (symlinks followed; a symlink to nothing, or a name gone since, is no file)."""
    files = []
    base = folder + os.sep
    for name in names:
        try:
            st = os.stat(base + name)
        except OSError:
            continue
        files.append((name, (st.st_size, st.st_mtime_ns, st.st_ino)))
    return files


def records_under(folder: str, rel: str, out: list[str]) -> None:
    """The records of `folder` (relative path `rel`) and of every folder under it."""
    pending = [(folder, rel)]
    while pending:
        folder, rel = pending.pop()
        found = scan_folder(folder)
        if found is None:
            continue
        files, folders = found
        out.append(folder_record(rel, files))
        pending += [(os.path.join(folder, n), f"{rel}{n}{os.sep}") for n in folders]


def tree_signature(root: str, processes: int = 1) -> str:
    """The signature of the tree under `root`, walked by `processes` processes (this one
    when 1)."""
    return signature_of(tree_records(root, processes))


def record_folder(record: str) -> str:
    """The folder a record is of, relative to the root ("" for the root, else ending in
    the separator)."""
    return record.partition("\0")[0]


def tree_records(root: str, processes: int = 1) -> list[str]:
    """The records of every folder under `root` (in no set order), walked by `processes`
    processes (this one when 1). A folder of SPLIT_FILES files or more found before the
    walk is shared out (a flat folder of 200,000 pose maps) has its files' stats taken in
    shares by the workers too."""
    records: list[str] = []
    frontier: list[tuple] = [(root, "")]
    flat: dict[str, tuple[str, list]] = {}  # rel -> (folder, its files' stats so far)
    stat_shares = []  # (folder, rel, names) of the flat folders
    if processes > 1:  # the top folders here, until there are enough to share out
        while frontier and len(frontier) + len(stat_shares) < processes * SHARES_PER_PROCESS:
            folder, rel = frontier.pop(0)
            found = list_folder(folder)
            if found is None:
                continue
            names, folders = found
            if len(names) >= SPLIT_FILES:
                flat[rel] = (folder, [])
                step = -(-len(names) // processes)
                stat_shares += [(folder, rel, names[i : i + step])
                                for i in range(0, len(names), step)]  # fmt: skip
            else:
                records.append(folder_record(rel, stat_files(folder, names)))
            frontier += [(os.path.join(folder, n), f"{rel}{n}{os.sep}") for n in sorted(folders)]
    frontier += stat_shares
    if processes <= 1 or len(frontier) < 2:
        for item in frontier:
            _take(item, records, flat)
    else:
        _shared_out(frontier, processes, records, flat)
    records += [folder_record(rel, files) for rel, (_, files) in flat.items()]
    return records


def _take(item: tuple, records: list[str], flat: dict[str, tuple[str, list]]) -> None:
    """One item of the walk, here: a folder walked ((folder, rel)), or a share of a flat
    folder's files stat'ed ((folder, rel, names))."""
    if len(item) == 2:
        records_under(item[0], item[1], records)
    else:
        flat[item[1]][1].extend(stat_files(item[0], item[2]))


def _shared_out(
    frontier: list[tuple], processes: int, records: list[str], flat: dict[str, tuple[str, list]]
) -> None:
    shares = [frontier[i::processes] for i in range(processes)]
    workers = [_start_worker(share) for share in shares]
    try:
        for worker, share in zip(workers, shares, strict=True):
            out = b""
            if worker is not None:
                with worker.stdout:
                    out = worker.stdout.read()
            if worker is not None and worker.wait() == 0:
                found = json.loads(out)
                records += found["records"]
                for rel, files in found["files"]:
                    flat[rel][1].extend((n, tuple(st)) for n, st in files)
            else:  # walked here instead: the error, if any, is raised here
                for item in share:
                    _take(item, records, flat)
    finally:  # interrupted, or failing here: no worker outlives the call
        for worker in workers:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait()


def _start_worker(share: list[tuple[str, str]]) -> subprocess.Popen | None:
    """A process walking `share`, or None when none can start (its share is walked here)."""
    # -I: only the standard library, whatever the environment and the script's folder.
    argv = [sys.executable, "-I", os.path.abspath(__file__)]
    try:
        worker = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError:
        return None
    try:
        worker.stdin.write(json.dumps(share).encode())
        worker.stdin.close()
    except OSError:  # it ended before reading
        worker.kill()
        worker.wait()
        return None
    return worker


def _main() -> None:
    records: list[str] = []
    files = []
    for item in json.load(sys.stdin):
        if len(item) == 2:
            records_under(item[0], item[1], records)
        else:
            files.append((item[1], stat_files(item[0], item[2])))
    json.dump({"records": records, "files": files}, sys.stdout)


if __name__ == "__main__":
    _main()
