"""Pairs stage: ordered pairs (A, B) of distinct images of one identity whose keypoints
both pass `min_valid_keypoints`, per split; the pairs table plus legacy CSVs."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cluster.stage_result import StageResult
from pipeline.core.atomic_io import atomic_path, read_table
from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.core.layout import SPLITS, DatasetLayout
from pipeline.core.legacy_csv import PAIRS_CSV_COLUMNS, append_rows, csv_text, read_image_list
from pipeline.core.paths import identity_groups
from pipeline.core.schemas import KEYPOINTS_SCHEMA, PAIRS_SCHEMA
from stages.spec import DATASET_ROOT, STORAGE_KEYS, StageSpec

PAIRING_COLUMNS = ["path", "file_id", "n_valid", "error"]


@dataclass
class PairCounts:
    images: int = 0
    excluded: Counter = field(default_factory=Counter)  # reason -> images
    pairs: dict[str, int] = field(default_factory=dict)  # split -> pairs


def eligible_images(keypoints: pd.DataFrame, min_valid: int) -> tuple[pd.DataFrame, Counter]:
    """Images usable in pairs, and the excluded ones counted by reason."""
    reasons = Counter()
    has_error = (
        keypoints["error"].notna() if "error" in keypoints else pd.Series(False, keypoints.index)
    )
    reasons["keypoint error"] = int(has_error.sum())
    too_few = ~has_error & (keypoints["n_valid"] < min_valid)
    reasons[f"fewer than {min_valid} valid keypoints"] = int(too_few.sum())
    return keypoints[~has_error & ~too_few], +reasons


def ordered_pairs(group_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (A, B) of all ordered pairs of distinct rows within consecutive groups
    of the given sizes, A-major then B as a nested loop would list them; vectorised."""
    starts = np.repeat(np.cumsum(group_sizes) - group_sizes, group_sizes)  # group start per row
    sizes = np.repeat(group_sizes, group_sizes)
    per_row = sizes - 1  # partners per row
    a = np.repeat(np.arange(len(starts)), per_row)
    j = np.arange(len(a)) - np.repeat(np.cumsum(per_row) - per_row, per_row)  # partner number
    local_a = a - starts[a]
    b = starts[a] + j + (j >= local_a)  # skip A itself
    return a, b


def pairs_for_split(
    images: pa.Table, split: str, max_per_identity: int | None, seed: int
) -> pa.Table:
    """All ordered pairs of distinct images per identity folder (`images`: path, file_id
    and group, sorted by group, then path); optionally a seeded, deterministic sample of at
    most `max_per_identity` pairs per identity. Arrow takes the strings of each pair: no
    Python object per pair (a million images make 5.6 million)."""
    groups, sizes = np.unique(images["group"].to_numpy(), return_counts=True)
    a, b = ordered_pairs(sizes)
    pair_group = np.repeat(np.arange(len(groups)), sizes * (sizes - 1))
    if max_per_identity is not None:
        keep = np.ones(len(a), bool)
        first = np.cumsum(sizes * (sizes - 1)) - sizes * (sizes - 1)
        for g in np.nonzero(sizes * (sizes - 1) > max_per_identity)[0]:
            n = sizes[g] * (sizes[g] - 1)
            # Seed per identity so adding identities never changes another's sample.
            rng = np.random.default_rng([seed, *groups[g].encode()])
            chosen = np.zeros(n, bool)
            chosen[rng.choice(n, size=max_per_identity, replace=False)] = True
            keep[first[g] : first[g] + n] = chosen
        a, b, pair_group = a[keep], b[keep], pair_group[keep]
    paths, fids = images["path"], images["file_id"]
    columns = {
        "imgA": paths.take(a),
        "imgB": paths.take(b),
        "fidA": fids.take(a),
        "fidB": fids.take(b),
        "group": pa.array(groups, pa.string()).take(pair_group),
        "split": pa.repeat(pa.scalar(split, pa.string()), len(a)),
    }
    return pa.table(columns, schema=PAIRS_SCHEMA)


# Identities paired at a time: the pairs of a million images (5.6 million, each a row of
# strings) are never all in memory; the table and the CSVs are written block by block
# (about 220,000 pairs each: 20,000 identities took 450 MB more at a million images).
IDENTITY_BLOCK = 5_000
# Blocks per row group of the pairs table: 20,000 identities, the row groups of tables
# written before, so that the same pairs give the same bytes (and content digest).
ROW_GROUP_BLOCKS = 4


@dataclass
class SplitImages:
    """A split's images usable in pairs, by identity folder, then path (columns path,
    file_id and group), and the row where each block of identities starts (then the end)."""

    columns: pa.Table
    bounds: list[int]

    def planned_pairs(self, max_per_identity: int | None) -> int:
        """How many pairs these images make, without making them."""
        _, sizes = np.unique(self.columns["group"].to_numpy(zero_copy_only=False),
                             return_counts=True)  # fmt: skip
        per_identity = sizes * (sizes - 1)
        if max_per_identity is not None:
            per_identity = np.minimum(per_identity, max_per_identity)
        return int(per_identity.sum())


def split_images(
    keypoints: pd.DataFrame,
    splits: dict[str, list[str]],
    min_valid: int,
    block: int = IDENTITY_BLOCK,
    counts: PairCounts | None = None,
) -> dict[str, SplitImages]:
    """The images of each split that pairs are made of (`counts`, when given, gets the
    images and the excluded ones by reason)."""
    counts = counts if counts is not None else PairCounts()
    counts.images = len(keypoints)
    ok, counts.excluded = eligible_images(keypoints, min_valid)
    if not ok["path"].is_monotonic_increasing:
        ok = ok.sort_values("path", ignore_index=True)
    group = identity_groups(pa.array(ok["path"], pa.string())).to_numpy(zero_copy_only=False)
    # Membership hashed in Arrow: pandas' isin of a million paths took 370 MB.
    listed = pa.array(ok["path"], pa.string())
    out = {}
    for split, paths in splits.items():
        member = pc.is_in(listed, value_set=pa.array(paths, pa.string()))
        member = member.to_numpy(zero_copy_only=False)
        images = ok[member].assign(group=group[member])
        # By group, then path: a stable sort by group of rows in path order (a two-column
        # sort of a million strings took hundreds of MB).
        codes = pd.factorize(images["group"], sort=True)[0]
        images = images.iloc[np.argsort(codes, kind="stable")].reset_index(drop=True)
        # Row where each `block`-th identity starts (an empty split: one empty block).
        starts = np.flatnonzero(images["group"].ne(images["group"].shift()).to_numpy())
        columns = pa.table({c: pa.array(images[c], pa.string())
                            for c in ("path", "file_id", "group")})  # fmt: skip
        out[split] = SplitImages(columns, [0, *starts[block::block], len(images)])
    return out


def pair_blocks(
    images: dict[str, SplitImages],
    max_per_identity: int | None = None,
    seed: int = 0,
    counts: PairCounts | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """The pure core: the images of each split (`split_images`) -> the pairs table in
    order (split by split, identity folder by identity folder), a block of identities at a
    time, each with its split (an empty split: one empty block); `counts` (when given)
    gets the pairs of each split as they go."""
    counts = counts if counts is not None else PairCounts()
    for split, these in images.items():
        counts.pairs[split] = 0
        for lo, hi in zip(these.bounds[:-1], these.bounds[1:], strict=True):
            part = pairs_for_split(these.columns.slice(lo, hi - lo), split, max_per_identity,
                                   seed)  # fmt: skip
            counts.pairs[split] += len(part)
            yield split, part


def make_pairs(
    keypoints: pd.DataFrame,
    splits: dict[str, list[str]],
    min_valid: int,
    max_per_identity: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, PairCounts]:
    """The whole pairs table at once (`pair_blocks`, for tables that fit in memory)."""
    counts = PairCounts()
    images = split_images(keypoints, splits, min_valid, counts=counts)
    parts = [part for _, part in pair_blocks(images, max_per_identity, seed, counts)]
    return pa.concat_tables([PAIRS_SCHEMA.empty_table(), *parts]).to_pandas(), counts


def write_pair_blocks(
    blocks: Iterable[tuple[str, pa.Table]],
    layout: DatasetLayout,
    splits: list[str],
    per_row_group: int = ROW_GROUP_BLOCKS,
    csv: bool = True,
) -> int:
    """The pairs table and (with `csv`) the legacy CSV of each split, written block by
    block, each file atomically (it appears whole or not at all), `per_row_group` blocks of
    a split to a row group; returns the pairs written."""
    written = 0
    with contextlib.ExitStack() as files:
        table = files.enter_context(atomic_path(layout.pairs_table))
        writer = files.enter_context(pq.ParquetWriter(table, PAIRS_SCHEMA))
        csvs = {}
        for split in splits if csv else ():
            tmp = files.enter_context(atomic_path(layout.pairs_csv(split)))
            csvs[split] = files.enter_context(open(tmp, "wb"))
            # As pandas' to_csv wrote them: "\n" line ends, minimal quoting.
            csvs[split].write(csv_text([PAIRS_CSV_COLUMNS], "\n").encode())
        group: list[pa.Table] = []
        held = (None, 0)  # the split and the blocks of the row group being gathered

        def flush() -> None:
            # One chunk: page boundaries follow chunks, and the bytes must not change.
            rows = pa.concat_tables(group).combine_chunks() if group else None
            if rows is not None and len(rows):
                writer.write_table(rows)
            group.clear()

        for split, rows in blocks:
            if held[0] != split or held[1] == per_row_group:
                flush()
                held = (split, 0)
            held = (split, held[1] + 1)
            group.append(rows)
            if csv:
                append_rows(csvs[split], {c: rows[c] for c in PAIRS_CSV_COLUMNS}, "\n")
            written += len(rows)
        flush()
        if written == 0:
            writer.write_table(PAIRS_SCHEMA.empty_table())
    return written


# pairs.export auto writes the legacy CSVs up to this many pairs (about 200 MB of text;
# DeepFashion's 52,712 images make 300,000, a million images 5.6 million).
CSV_MAX_PAIRS = 2_000_000


def csv_not_exported(layout: DatasetLayout, splits: list[str], planned: int, export) -> list[str]:
    """Remove the CSVs of an earlier run, which would no longer match the table (they are
    exports of it, made again with pairs.export: true); say so."""
    why = (
        "pairs.export: false"
        if export is False
        else (f"pairs.export auto: {planned:,} pairs > {CSV_MAX_PAIRS:,}")
    )
    lines = [f"legacy pair CSVs not written ({why}; pairs.export: true writes them)"]
    for split in splits:
        stale = layout.pairs_csv(split)
        if stale.is_file():
            stale.unlink()
            lines.append(f"{stale} removed: it no longer matches the pairs table")
    return lines


def pairs_report(counts: PairCounts) -> list[str]:
    lines = [f"{counts.images} image(s) in the keypoints table"]
    lines += [f"excluded ({reason}): {n}" for reason, n in sorted(counts.excluded.items())]
    lines += [f"{split}: {n} pair(s)" for split, n in counts.pairs.items()]
    return lines


def run_pairs(
    cfg: Config,
    min_valid: int | None = None,
    max_per_identity: int | None = None,
    out: str | None = None,
) -> StageResult:
    """Pairs per split from the keypoints table and the image lists. Pure pandas and fast
    (seconds for 52,700 images), so it runs on the driver without starting Ray."""
    result = StageResult("pairs")
    root = cfg.dataset.root
    source, layout = DatasetLayout(root), DatasetLayout(out or root)
    if not source.keypoints_table.exists():
        raise DataError(
            f"no keypoints table at {source.keypoints_table}: run the keypoints stage first"
        )
    # What pairing needs: no keypoint coordinates (most of the table's memory).
    keypoints = read_table(source.keypoints_table, KEYPOINTS_SCHEMA, PAIRING_COLUMNS)
    lists = {s: DatasetLayout.of(cfg.dataset).image_list(s) for s in SPLITS}
    # The lists only select rows of the keypoints table, whose paths the keypoints stage
    # checked: none is opened here, so they are not checked again (a million paths, 1 s).
    splits = {s: read_image_list(f, root, checked=False) for s, f in lists.items() if f.is_file()}
    if not splits:
        raise DataError(
            f"no image lists at {' or '.join(map(str, lists.values()))}: pairs need the splits"
        )
    min_valid = cfg.pairs.min_valid_keypoints if min_valid is None else min_valid
    max_per_identity = max_per_identity or cfg.pairs.max_pairs_per_identity
    counts = PairCounts()
    images = split_images(keypoints, splits, min_valid, counts=counts)
    planned = sum(these.planned_pairs(max_per_identity) for these in images.values())
    csv = cfg.pairs.export is True or (cfg.pairs.export == "auto" and planned <= CSV_MAX_PAIRS)
    blocks = pair_blocks(images, max_per_identity, cfg.pairs.seed, counts)
    written = write_pair_blocks(blocks, layout, list(splits), csv=csv)
    unlisted = len(set().union(*splits.values()) - set(keypoints["path"]))
    if unlisted:
        counts.excluded["listed but not in the keypoints table"] = unlisted
    result.outputs = {"pairs_table": str(layout.pairs_table)}
    for split in splits if csv else ():
        result.outputs[f"{split}_csv"] = str(layout.pairs_csv(split))
    if not csv:
        result.notes += csv_not_exported(layout, list(splits), planned, cfg.pairs.export)
    result.rows_in, result.rows_out = len(keypoints), written
    result.skipped = sum(counts.excluded.values())
    result.notes += pairs_report(counts)
    return result.finish()


STAGE = StageSpec(
    name="pairs",
    version=1,
    run=lambda cfg, fresh: run_pairs(cfg),
    does=lambda cfg: (
        "pair the images of each identity, train and test, leaving out those "
        f"with fewer than {cfg.pairs.min_valid_keypoints} valid keypoints"
    ),
    config_keys=(
        "dataset.train_list",
        "dataset.test_list",
        "pairs.min_valid_keypoints",
        "pairs.max_pairs_per_identity",
        "pairs.seed",
        "pairs.export",
    ),
    ignored_keys={**DATASET_ROOT, **STORAGE_KEYS},
    inputs=lambda cfg: [
        DatasetLayout(cfg.dataset.root).keypoints_table,
        *(DatasetLayout.of(cfg.dataset).image_list(s) for s in SPLITS),
    ],
    outputs=lambda cfg: [DatasetLayout(cfg.dataset.root).pairs_table],
    previous=lambda cfg: [
        DatasetLayout(cfg.dataset.root).pairs_table,
        *(DatasetLayout(cfg.dataset.root).pairs_csv(s) for s in SPLITS),
    ],
)
