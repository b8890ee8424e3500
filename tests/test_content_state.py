"""The content-digest cache: a same-size rewrite is a change, an mtime alone is not."""

from __future__ import annotations

import os

import pytest

from pipeline.core.content_state import ContentCache, Folder, file_digest, listing_digest


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


def test_a_tree_lists_what_os_walk_finds_in_its_order_with_the_same_digests(tmp_path):
    """The walk behind every up-to-date check of a local folder: files by name before each
    sub-folder's, hidden names and symlinked folders passed over, symlinked files kept;
    a file's digest is its content's, read once while its stat holds."""
    root = tmp_path / "img"
    for rel in ("b/2.jpg", "b/1.jpg", "a.jpg", "c/d/e.jpg", ".hidden/x.jpg", "b/.tmp.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "linked").symlink_to(root / "c", target_is_directory=True)
    (root / "z.jpg").symlink_to(root / "a.jpg")
    with ContentCache(tmp_path / "cache.sqlite") as cache:
        tree = cache.tree(root)
        assert list(tree) == ["a.jpg", "z.jpg", "b/1.jpg", "b/2.jpg", "c/d/e.jpg"]
        expected = {}
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = os.path.join(folder, name)
                expected[os.path.relpath(path, root)] = file_digest(path)
        assert tree == expected
        assert tree["z.jpg"] == tree["a.jpg"]
        read = cache.files_read
        assert cache.tree(str(root)) == tree and cache.files_read == read


def test_a_cached_tree_is_looked_up_a_few_sibling_folders_at_a_time(tmp_path):
    """Sibling names that sort apart from their paths ("a" < "a-b" but "a-b/x" < "a/x")
    still come from the siblings' one query: walking a cached tree asks for no single file."""
    names = ["a", "a-b", "a.b", "b", "b c"]
    for name in names:
        (tmp_path / "img" / name).mkdir(parents=True)
        (tmp_path / "img" / name / "x.jpg").write_bytes(name.encode())
    db = tmp_path / "cache.sqlite"
    with ContentCache(db) as cache:
        first = cache.tree(tmp_path / "img")
    with ContentCache(db) as cache:
        asked = []
        cache._conn.set_trace_callback(asked.append)
        assert cache.tree(tmp_path / "img") == first and cache.files_read == 0
    assert sorted(first) == sorted(f"{n}/x.jpg" for n in names)
    assert not [q for q in asked if "path = ?" in q or "WHERE path =" in q], asked


def test_an_unchanged_tree_is_known_by_its_stat_signature_and_a_changed_one_is_digested(
    tmp_path,
):
    """The up-to-date check of a folder: while every file's path, size, mtime and inode
    are what the digest was recorded with, no file's row is looked up and none is read;
    a file rewritten in place, added or removed gives the digest of a fresh walk."""
    root, db = tmp_path / "img", tmp_path / "cache.sqlite"
    for rel in ("a/1.jpg", "a/2.jpg", "b/1.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    with ContentCache(db) as cache:
        first = cache.tree(root).digest
        assert cache.tree_digest(root) == first
    with ContentCache(db) as cache:
        asked = []
        cache._conn.set_trace_callback(asked.append)
        assert cache.tree_digest(root) == first and cache.files_read == 0
        assert not [q for q in asked if "FROM files" in q], asked

    def fresh() -> str:
        with ContentCache(tmp_path / "fresh.sqlite", readonly=True) as other:
            return other.tree(root).digest

    def rewrite_in_place() -> None:  # same size, same inode, a later mtime
        (root / "a/1.jpg").write_bytes(b"A/1.JPG")
        touch(root / "a/1.jpg", 1)

    changes = [
        rewrite_in_place,
        lambda: (root / "b/2.jpg").write_bytes(b"new"),
        lambda: (root / "a/2.jpg").unlink(),
    ]
    seen = {first}
    for change in changes:
        change()
        with ContentCache(db) as cache:
            now = cache.tree_digest(root)
        assert now == fresh() and now not in seen
        seen.add(now)
    with ContentCache(db, readonly=True) as cache:  # what the last walk recorded holds
        asked = []
        cache._conn.set_trace_callback(asked.append)
        assert cache.tree_digest(root) == now
        assert not [q for q in asked if "FROM files" in q], asked
    # A cache written before signatures were kept, opened read-only (a dry run after an
    # upgrade): the tree is walked, as then.
    with ContentCache(db) as cache:
        cache._conn.execute("DROP TABLE tree_signatures")
        cache._conn.commit()
    with ContentCache(db, readonly=True) as cache:
        assert cache.tree_digest(root) == now


def test_a_kept_listing_is_reused_while_the_signature_holds_and_walked_again_after(tmp_path):
    """After a stage, the DAG hands back the listing it recorded (`keep_listing`): the next
    stage that asks gets it without a walk with digests while the folder's stat signature
    is the one it was walked with; any change is walked and digested again."""
    root = tmp_path / "img"
    for rel in ("a/1.jpg", "a/2.jpg", "b/1.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    loads = []

    def load():
        loads.append(1)
        return dict(recorded)

    with ContentCache(tmp_path / "c.sqlite") as cache:
        recorded = dict(cache.tree(root))
        cache.keep_listing(root, load)
        cache.forget_trees()  # a stage ran
        asked = []
        cache._conn.set_trace_callback(asked.append)
        assert cache.tree(root) == recorded and len(loads) == 1
        assert cache.tree_digest(root) == cache.tree(root).digest
        assert not [q for q in asked if "FROM files" in q], asked
        cache.forget_trees()  # another stage ran, and this one wrote in the folder
        (root / "b/1.jpg").write_bytes(b"changed")
        touch(root / "b/1.jpg", 5)
        now = cache.tree(root)
        assert len(loads) == 1 and now["b/1.jpg"] == file_digest(root / "b/1.jpg")
    with ContentCache(tmp_path / "fresh.sqlite", readonly=True) as fresh:
        assert fresh.tree(root).digest == now.digest != listing_digest(recorded)


def test_the_stat_signature_is_the_same_from_one_process_or_several(tmp_path):
    """Workers walk shares of the sub-folders; the records are sorted, so the signature
    is the one the cache recorded from its own walk, and it changes with any file's stat."""
    from pipeline.core.tree_signature import tree_signature

    root = tmp_path / "img"
    for i in range(40):
        (root / f"g{i % 3}" / f"id_{i:02d}").mkdir(parents=True, exist_ok=True)
        (root / f"g{i % 3}" / f"id_{i:02d}" / "1.jpg").write_bytes(bytes([i]) * 10)
    (root / "top.jpg").write_bytes(b"top")
    (root / "g0" / "gone.jpg").symlink_to(root / "nothing.jpg")  # passed over everywhere
    with ContentCache(tmp_path / "cache.sqlite") as cache:
        cache.tree(root)
        recorded = cache._new_trees[str(root)][0]
    assert tree_signature(str(root), 1) == tree_signature(str(root), 3) == recorded
    touch(root / "g2" / "id_38" / "1.jpg", 1)
    assert tree_signature(str(root), 3) == tree_signature(str(root), 1) != recorded


def test_a_stage_that_writes_elsewhere_leaves_a_folders_signature_known(tmp_path, monkeypatch):
    """Between stages the DAG forgets only the folders a stage writes in (its outputs):
    the images it reads keep their stat signature, taken once per run; a folder that holds
    or lies inside a written path is signed again, and sees the change."""
    from pipeline.core import content_state

    taken = []

    def counted(root, processes):
        taken.append(root)
        return tree_records(root, processes)

    tree_records = content_state.tree_records
    monkeypatch.setattr(content_state, "tree_records", counted)
    images, maps = tmp_path / "data" / "img", tmp_path / "data" / "maps"
    for folder in (images, maps):
        (folder / "a").mkdir(parents=True)
        (folder / "a" / "1.jpg").write_bytes(b"1")
    with ContentCache(tmp_path / "c.sqlite") as cache:
        cache.tree_digest(images), cache.tree_digest(maps)
        cache.save()
        cache.forget_trees()  # everything: the first stage
        first = {k: cache.tree_digest(k) for k in (images, maps)}
        assert len(taken) == 2
        (maps / "a" / "2.jpg").write_bytes(b"2")  # the stage writes one map
        cache.forget_trees([maps / "a" / "2.jpg", tmp_path / "data" / "tables"])
        assert cache.tree_digest(images) == first[images] and len(taken) == 2
        assert cache.tree_digest(maps) != first[maps] and len(taken) == 3
        cache.forget_trees([tmp_path / "data"])  # a folder that holds both
        cache.tree_digest(images)
        assert len(taken) == 4


def test_a_recorded_listing_is_brought_up_to_date_by_scanning_only_changed_folders(
    tmp_path, monkeypatch
):
    """A folder that changed since a stage recorded its listing (`listed_before`) is not
    walked whole: folders whose record (their files' names and stats) is the same keep
    the recorded digests, the others are scanned. The result is a fresh walk's listing,
    whatever changed: a file added, a folder added or removed, a rewrite in place."""
    from pipeline.core import content_state

    root = tmp_path / "img"
    for ident in range(6):
        (root / f"id_{ident}").mkdir(parents=True)
        for pose in range(3):
            (root / f"id_{ident}" / f"{pose}.jpg").write_bytes(f"{ident}-{pose}".encode())
    (root / "top.jpg").write_bytes(b"top")
    db = tmp_path / "c.sqlite"
    with ContentCache(db) as cache:
        recorded = dict(cache.tree(root))
        digest = cache.tree_digest(root)
    (root / "id_0" / "3.jpg").write_bytes(b"added")  # a file added to a folder
    (root / "id_9" / "deep").mkdir(parents=True)  # new folders
    (root / "id_9" / "deep" / "0.jpg").write_bytes(b"new")
    (root / "id_1" / "0.jpg").write_bytes(b"1-X")  # same size, other bytes
    touch(root / "id_1" / "0.jpg", 3)
    for name in os.listdir(root / "id_2"):  # a folder removed
        os.remove(root / "id_2" / name)
    os.rmdir(root / "id_2")
    (root / "id_3" / ".hidden.jpg").write_bytes(b"hidden")  # not a file of the listing
    scanned = []

    def counted(folder):
        scanned.append(os.path.relpath(folder, root))
        return scan_folder(folder)

    scan_folder = content_state.scan_folder
    monkeypatch.setattr(content_state, "scan_folder", counted)
    with ContentCache(db) as cache:
        cache.listed_before(root, digest, lambda: dict(recorded))
        now = cache.tree(root)
        assert sorted(scanned) == ["id_0", "id_1", "id_9", "id_9/deep"], scanned
        # Recorded by a stage, let go, and asked again by a later stage (the images, by
        # generate): what changed is known without reading the listing back.
        cache.keep_listing(root, lambda: pytest.fail("the kept listing was read back"))
        cache.forget_trees([tmp_path / "elsewhere"])
        assert Folder(cache, root).changes_since(digest) == (1, 2, 3)
    with ContentCache(tmp_path / "fresh.sqlite") as fresh:
        assert dict(now) == dict(fresh.tree(root)) and now.digest == fresh.tree(root).digest
    # What changed, known without comparing the two listings: id_1/0.jpg; id_0/3.jpg and
    # id_9/deep/0.jpg; id_2's three files.
    assert now.since == (digest, (1, 2, 3))
    # Recorded under another digest (not the last walk's): the folder is walked whole.
    scanned.clear()
    (root / "id_4" / "9.jpg").write_bytes(b"9")
    with ContentCache(db) as cache:
        cache.listed_before(root, digest, lambda: dict(recorded))
        walked = cache.tree(root)
        assert len(scanned) == 8 and walked["id_4/9.jpg"] == file_digest(root / "id_4/9.jpg")
        cache.save()
    # The walk recorded the folders' records again: the next change scans one folder.
    scanned.clear()
    (root / "id_5" / "9.jpg").write_bytes(b"95")
    with ContentCache(db) as cache:
        cache.listed_before(root, walked.digest, lambda: dict(walked))
        again = cache.tree(root)
        assert scanned == ["id_5"] and again["id_5/9.jpg"] == file_digest(root / "id_5/9.jpg")
