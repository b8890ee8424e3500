"""The content-digest cache: a same-size rewrite is a change, an mtime alone is not."""

from __future__ import annotations

import os

from pipeline.core.content_state import ContentCache, file_digest


def touch(path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def test_same_size_rewrite_in_place_is_read_again_and_mtime_only_digests_the_same(tmp_path):
    path, db = tmp_path / "image.jpg", tmp_path / "content.sqlite"
    path.write_bytes(b"abcd" * 1024)
    with ContentCache(db) as cache:
        first = cache.digest(path)
        assert cache.digest(path) == first and cache.files_read == 1  # stat unchanged: not read
        before = path.stat()
        with open(path, "r+b") as fh:  # the same inode and size, other bytes
            fh.write(b"ABCD" * 1024)
        touch(path, 1)
        after = path.stat()
        assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino)
        second = cache.digest(path)
        assert second != first and second == file_digest(path) and cache.files_read == 2
        touch(path, 2)
        assert cache.digest(path) == second
    with ContentCache(db) as again:  # the digests were saved with their stat
        assert again.digest(path) == second and again.files_read == 0
