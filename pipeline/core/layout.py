"""Where every file lives: the dataset layout (images, legacy annotation files, our tables),
the output layout (training, generation, evaluation, reports, DAG state) and the published
generation layout, whose writer and reader are both here."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.core.errors import DataError
from pipeline.core.object_path import DataPath, data_path
from pipeline.core.paths import checkpoint_sort_key

if TYPE_CHECKING:
    from pipeline.core.config import DatasetConfig, StorageConfig

SPLITS = ("train", "test")


class DatasetLayout:
    """Paths of the annotation files under a dataset root. The legacy files sit where the
    published layout has them; our Parquet tables sit together in `tables/`."""

    def __init__(
        self,
        root: str | os.PathLike,
        tables_dir: str | os.PathLike | None = None,
        train_list: str = "train_img_list.csv",
        test_list: str = "test_img_list.csv",
    ):
        self.root = data_path(root)
        self.tables = data_path(tables_dir) if tables_dir else self.root / "tables"
        self.lists = {"train": train_list, "test": test_list}

    @classmethod
    def of(cls, dataset: DatasetConfig) -> DatasetLayout:
        """The layout of a config's dataset, with the image lists it names: what the stages
        read and the DAG digests must be the same files."""
        return cls(dataset.root, train_list=dataset.train_list, test_list=dataset.test_list)

    @property
    def images(self) -> DataPath:
        return self.root / "img"

    @property
    def keypoints_table(self) -> DataPath:
        return self.tables / "keypoints.parquet"

    @property
    def keypoints_parts(self) -> DataPath:
        """Finished batches of an estimation run, merged into the table at its end."""
        return self.tables / "keypoints.parts"

    @property
    def keypoints_sources(self) -> DataPath:
        """Content digest of the image behind each keypoints row (what a rerun compares)."""
        return self.tables / "keypoints_sources.parquet"

    @property
    def keypoints_qa(self) -> DataPath:
        """Estimated keypoints scored against a reference CSV (annotation QA)."""
        return self.tables / "keypoints_qa.parquet"

    @property
    def posemap_index(self) -> DataPath:
        """Digest of the keypoints row behind each pose map (what a rerun compares)."""
        return self.tables / "posemaps_index.parquet"

    @property
    def pairs_table(self) -> DataPath:
        return self.tables / "pairs.parquet"

    def image_list(self, split: str) -> DataPath:
        """The split's image list (relative names under the root; an absolute one as is)."""
        return self.root / self.lists[split]

    def keypoints_csv(self, split: str) -> DataPath:
        return self.root / f"{split}_img_keypoints.csv"

    def posemap_dir(self, split: str) -> DataPath:
        return self.root / f"{split}_pose_maps"

    def posemap(self, split: str, fid: str) -> DataPath:
        return self.root / self.posemap_name(split, fid)

    @staticmethod
    def posemap_name(split: str, fid: str) -> str:
        """A pose map's path relative to the dataset root (what the map index stores)."""
        return f"{split}_pose_maps/{fid}.npz"

    @staticmethod
    def posemap_names(splits: pa.Array, fids: pa.Array) -> tuple[pa.Array, pa.Array]:
        """`posemap_name` of each row, column-wise in Arrow, and each map's file name (a
        million rows formatted one by one took seconds)."""
        names = pc.binary_join_element_wise(fids, ".npz", "")
        return pc.binary_join_element_wise(splits, "_pose_maps/", names, ""), names

    def pairs_csv(self, split: str) -> DataPath:
        return self.root / f"{split}_img_pairs.csv"


class OutputLayout:
    """The stages' outputs under `output.root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = data_path(root)

    @property
    def train(self) -> DataPath:
        return self.root / "train"

    @property
    def checkpoints(self) -> DataPath:
        return self.train / "checkpoints"

    @property
    def generated(self) -> DataPath:
        return self.root / "generated"

    @property
    def manifest(self) -> DataPath:
        return self.generated / GenerationLayout.MANIFEST

    @property
    def evaluation(self) -> DataPath:
        return self.root / "evaluation"

    def report(self, name: str) -> DataPath:
        return self.root / "reports" / name

    @property
    def state(self) -> DataPath:
        """The DAG's fingerprints and the content-hash cache."""
        return self.root / "_state"

    @property
    def _local_state(self) -> Path:
        """State that needs a local filesystem (a lock, SQLite): in the state folder, or
        for an object-storage root in this host's storage.cache_dir."""
        if isinstance(self.root, Path):
            return self.state
        return storage.local_state_dir(self.root)

    @property
    def lock(self) -> Path:
        """Held by the one run that may write under this root (pipeline/core/run_lock.py).
        Object storage has no lock: there it is this host's, and runs on other hosts go
        unseen."""
        return self._local_state / "run.lock"

    @property
    def content_cache(self) -> Path:
        """The content-digest cache (pipeline/core/content_state.py)."""
        return self._local_state / "content.sqlite"

    @property
    def plot_cache(self) -> Path:
        """Report plots by the digest of what they draw (stages/report_figures.py)."""
        return self._local_state / "plots"

    def previous(self, stage: str, run_id: str) -> DataPath:
        """Where a rerun moves a stage's earlier outputs instead of deleting them."""
        return self.root / f"{stage}.prev" / run_id

    @property
    def run_manifest(self) -> DataPath:
        return self.root / "run_manifest.parquet"


class TrainLayout:
    """Where training writes under its output directory (default `O/train/`)."""

    STATE_FILE = "state.pt"
    STATE_DIR_PREFIX = "state_"

    def __init__(self, out: str | os.PathLike):
        self.root = data_path(out).resolve()
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.log = self.root / "log.parquet"
        self.meta = self.root / "run_meta.json"
        self.ray_storage = self.root / "ray"  # Ray Train runs and resumable states

    def net_checkpoint(self, net: str, iteration: int) -> DataPath:
        return self.checkpoints / f"{net}_{iteration}.pth"

    def sample_grid(self, iteration: int) -> DataPath:
        return self.samples / f"iter_{iteration}.png"

    def latest_state(self) -> tuple[int, DataPath] | None:
        """The resumable state with the highest iteration over all runs, if any."""
        found = []
        for state in self.ray_storage.glob(f"*/{self.STATE_DIR_PREFIX}*/{self.STATE_FILE}"):
            digits = state.parent.name[len(self.STATE_DIR_PREFIX) :]
            if digits.isdigit():
                found.append((int(digits), state.parent))
        return max(found) if found else None


class GenerationLayout:
    """The published test script's output layout, relative to a generation root:
    `real_images/real_B/<n>@<fidB>.jpg` and `fake_images/iter_<ckpt>/fake_B/<n>@<fidB>.jpg`
    for A->B, the same with `A` for B->A; `n` is the pair's 0-based index."""

    MANIFEST = "manifest.parquet"
    # direction -> (target side, condition side): fake_B is generated from A in B's pose.
    DIRECTIONS = {"AB": ("B", "A"), "BA": ("A", "B")}
    NAME_RE = re.compile(r"^(\d+)@(.+)\.jpg$")
    CKPT_RE = re.compile(r"^iter_(.+)$")

    @staticmethod
    def real(direction: str, index: int, target_id: str) -> str:
        return f"real_images/real_{direction[1]}/{index}@{target_id}.jpg"

    @staticmethod
    def fake(ckpt: str, direction: str, index: int, target_id: str) -> str:
        return f"fake_images/iter_{ckpt}/fake_{direction[1]}/{index}@{target_id}.jpg"

    @staticmethod
    def real_dir(side: str) -> str:
        return f"real_images/real_{side}"

    @staticmethod
    def fake_dir(side: str) -> str:
        return f"fake_{side}"

    @classmethod
    def parse_name(cls, name: str) -> tuple[int, str] | None:
        """(n, file id) of `<n>@<fid>.jpg`, None for any other name."""
        m = cls.NAME_RE.match(name)
        return (int(m.group(1)), m.group(2)) if m else None

    @classmethod
    def name_order(cls, name: str) -> tuple:
        parsed = cls.parse_name(name)
        return (0, parsed[0], name) if parsed else (1, 0, name)

    @classmethod
    def checkpoint_of(cls, folder: str) -> str | None:
        m = cls.CKPT_RE.match(folder)
        return m.group(1) if m else None


class EvaluationLayout:
    """Where the evaluate stage writes under its output directory."""

    def __init__(self, out: str | os.PathLike):
        self.root = data_path(out)

    def per_image(self, metric: str) -> DataPath:
        return self.root / "per_image" / f"{metric}.parquet"

    @property
    def summary(self) -> DataPath:
        return self.root / "summary.parquet"

    @property
    def pairs(self) -> DataPath:
        return self.root / "pairs.parquet"

    @property
    def meta(self) -> DataPath:
        return self.root / "evaluation.json"


PAIRS_INDEX_SCHEMA = pa.schema(
    [  # what scan_generation found: one row per generated image
        ("checkpoint", pa.string()),
        ("direction", pa.string()),
        ("index", pa.int64()),
        ("name", pa.string()),
        ("real_path", pa.string()),
        ("fake_path", pa.string()),
        ("condition_path", pa.string()),
        ("error", pa.string()),
    ]
)


def scan_generation(
    gen_root: str | os.PathLike, storage_cfg: StorageConfig | None = None
) -> pd.DataFrame:
    """Pairs of a published-layout directory (a local folder or an object-store prefix),
    matched by file name: one row per generated image with its real target and the
    condition image of the same index n. One listing of the tree (on S3: LIST calls only).

    Columns: checkpoint, direction, index, name, real_path, fake_path, condition_path, error
    (paths relative to `gen_root`; error says what is missing)."""
    return generation_pairs(gen_root, storage.list_files(gen_root, storage_cfg=storage_cfg))


def generation_pairs(gen_root: str | os.PathLike, files: list[storage.FileState]) -> pd.DataFrame:
    """scan_generation's rows from a listing of the generation root (`files`)."""
    g = GenerationLayout
    if not any(f.rel.startswith("fake_images/") for f in files):
        raise DataError(
            f"{gen_root} is not a generation directory: "
            f"{storage.join(gen_root, 'fake_images')} is missing. Expected the published layout "
            "real_images/real_{A,B}/<n>@<fid>.jpg and "
            "fake_images/iter_<ckpt>/fake_{A,B}/<n>@<fid>.jpg (run the generate stage first)."
        )
    folders = jpg_folders(files)
    reals = {side: set(folders.get(g.real_dir(side), [])) for side in ("A", "B")}
    by_index = {
        side: {parsed[0]: n for n in sorted(names) if (parsed := g.parse_name(n))}
        for side, names in reals.items()
    }
    ckpt_dirs = {folder.split("/")[1] for folder in folders if folder.startswith("fake_images/")}
    ckpts = {c for d in ckpt_dirs if (c := g.checkpoint_of(d)) is not None}
    rows = []
    for ckpt in sorted(ckpts, key=checkpoint_sort_key):
        for direction, (target, _) in g.DIRECTIONS.items():
            folder = f"fake_images/iter_{ckpt}/{g.fake_dir(target)}"
            for name in sorted(folders.get(folder, []), key=g.name_order):
                rows.append(pair_row(folder, direction, name, reals, by_index))
    return pd.DataFrame(rows, columns=PAIRS_INDEX_SCHEMA.names)


def jpg_folders(files: list[storage.FileState]) -> dict[str, list[str]]:
    """Folder (relative) -> the .jpg names directly in it, as a glob of each would find."""
    folders: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.rel.rpartition("/")
        if name.endswith(".jpg"):
            folders.setdefault(folder, []).append(name)
    return folders


def pair_row(
    fake_folder: str,
    direction: str,
    name: str,
    reals: dict[str, set[str]],
    by_index: dict[str, dict[int, str]],
) -> dict:
    """The index row of the generated image `name` in `fake_folder`; `reals`: the real
    images' names per side, `by_index`: the same by their index n."""
    g = GenerationLayout
    target, condition = g.DIRECTIONS[direction]
    parsed = g.parse_name(name)
    cond = by_index[condition].get(parsed[0]) if parsed else None
    error = None
    if not parsed:
        error = f"file name {name!r} is not <n>@<file id>.jpg"
    elif name not in reals[target]:
        error = f"no real image {g.real_dir(target)}/{name} for the generated one"
    return {
        "checkpoint": g.checkpoint_of(fake_folder.split("/")[1]),
        "direction": direction,
        "index": parsed[0] if parsed else -1,
        "name": name,
        "real_path": f"{g.real_dir(target)}/{name}",
        "fake_path": f"{fake_folder}/{name}",
        "condition_path": f"{g.real_dir(condition)}/{cond}" if cond else None,
        "error": error,
    }
