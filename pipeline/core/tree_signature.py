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
    files, folders = [], []
    try:
        with os.scandir(folder) as found:
            entries = [e for e in found if not e.name.startswith(".")]
    except OSError:
        return None
    for entry in entries:
        if entry.is_dir():
            if not entry.is_symlink():
                folders.append(entry.name)
            continue
        try:
            st = entry.stat()
        except OSError:  # a symlink to nothing: no file
            continue
        files.append((entry.name, (st.st_size, st.st_mtime_ns, st.st_ino)))
    return files, folders


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
    processes (this one when 1)."""
    records: list[str] = []
    frontier = [(root, "")]
    if processes > 1:  # the top folders here, until there are enough to share out
        while frontier and len(frontier) < processes * SHARES_PER_PROCESS:
            folder, rel = frontier.pop(0)
            found = scan_folder(folder)
            if found is None:
                continue
            files, folders = found
            records.append(folder_record(rel, files))
            frontier += [(os.path.join(folder, n), f"{rel}{n}{os.sep}") for n in sorted(folders)]
    if processes <= 1 or len(frontier) < 2:
        for folder, rel in frontier:
            records_under(folder, rel, records)
        return records
    shares = [frontier[i::processes] for i in range(processes)]
    workers = [_start_worker(share) for share in shares]
    try:
        for worker, share in zip(workers, shares, strict=True):
            out = b""
            if worker is not None:
                with worker.stdout:
                    out = worker.stdout.read()
            if worker is not None and worker.wait() == 0:
                records += json.loads(out)
            else:  # walked here instead: the error, if any, is raised here
                for folder, rel in share:
                    records_under(folder, rel, records)
    finally:  # interrupted, or failing here: no worker outlives the call
        for worker in workers:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait()
    return records


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
    for folder, rel in json.load(sys.stdin):
        records_under(folder, rel, records)
    json.dump(records, sys.stdout)


if __name__ == "__main__":
    _main()
