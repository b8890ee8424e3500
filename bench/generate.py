"""Benchmark: the generate stage vs the published test loop vs model-only NetG forward,
on the same pairs, checkpoint size and batch size (bench/README.md, "Generation"), at each
run size of `--images`; with `--dedup`, the stage with and without deduplication of
identical jobs on a symmetric pair set.

    .venv/bin/python bench/generate.py --ngf 8 --batch-size 16 --images 320 1200

The speed pairs hold every unordered pair of an identity once ((a, b) without (b, a)), so
every job is distinct and the stage does the same forwards as the loop. Prints one JSON
object (images/s of each, the ratios the issues set goals for) and, when a GPU is present,
the model-only GPU sweep (fp32/bf16, channels_last, batch 8..128).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pipeline.core.layout import DatasetLayout
from pipeline.core.legacy_csv import write_pairs_csv  # noqa: E402

NETG_GFLOP_256x176 = 144.0  # per image at ngf 64 (DESIGN 4: about 209 GFLOP at 256x256)


def build_annotated_tree(root: Path, identities: int, poses: int, test_fraction: float) -> None:
    """A synthetic tree with its keypoints table, npz pose maps and pairs table (the same
    cores the annotation stages run)."""
    from pipeline.synthetic.tree import write_synthetic_tree
    from stages.ground_truth import annotate_from_ground_truth

    write_synthetic_tree(
        root, identities=identities, poses_per_identity=poses, seed=0, test_fraction=test_fraction
    )
    annotate_from_ground_truth(root)


def distinct_pairs(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first `n` pairs (a, b) with a < b: no pair comes with its reverse, so every
    generation job (pair, direction) is distinct."""
    one_way = pairs[pairs["fidA"] < pairs["fidB"]].reset_index(drop=True)
    if len(one_way) < n:
        raise SystemExit(f"only {len(one_way)} distinct test pairs; raise --identities")
    return one_way.head(n)


def symmetric_pairs(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """Whole identity groups from the top of the table until at least `n` pairs: the pair rule
    takes every ordered pair of a group, so (a, b) comes with (b, a) as in a full test set."""
    sizes = pairs.groupby("group", sort=False).size()
    groups = sizes.index[: int(np.searchsorted(sizes.cumsum().to_numpy(), n)) + 1]
    return pairs[pairs["group"].isin(groups)].reset_index(drop=True)


# --- the published test script's approach ---------------------------------------------


class PublishedPairs(torch.utils.data.Dataset):
    """As the published dataloader: PIL images through ToTensor + Normalize, float32 npz
    maps through ToTensor, A/B swapped for the reverse direction."""

    def __init__(self, root: Path, pairs: pd.DataFrame, maps_dir: Path, reverse: bool):
        import torchvision.transforms as T

        self.root, self.pairs, self.maps_dir, self.reverse = root, pairs, maps_dir, reverse
        self.img_tf = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        self.map_tf = T.ToTensor()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        row = self.pairs.iloc[i]
        item = {}
        for k in ("A", "B"):
            item[f"img{k}"] = self.img_tf(Image.open(self.root / row[f"img{k}"]))
            with np.load(self.maps_dir / f"{row[f'fid{k}']}.npz") as npz:
                item[f"map{k}"] = self.map_tf(np.float32(npz["arr_0"]))
            item[f"fid{k}"] = row[f"fid{k}"]
        if self.reverse:
            item = {
                k.replace("A", "#").replace("B", "A").replace("#", "B"): v for k, v in item.items()
            }
        return item


def published_loop(
    root: Path, pairs: pd.DataFrame, ckpt: Path, ngf: int, batch: int, out: Path, device: str
) -> int:
    """DataLoader, one forward per batch, each image saved inside the loop (make_grid with
    normalize, ToPILImage, JPEG), both directions; returns the generated image count."""
    import torchvision

    from pipeline.core.weights import load_into
    from pipeline.generator.networks import NetG

    net = load_into(NetG(ngf=ngf), ckpt).eval().to(device)
    to_pil = torchvision.transforms.ToPILImage()
    n_out = 0
    for target, reverse in (("B", False), ("A", True)):
        real_dir, fake_dir = out / f"real_{target}", out / f"fake_{target}"
        real_dir.mkdir(parents=True)
        fake_dir.mkdir(parents=True)
        loader = torch.utils.data.DataLoader(
            PublishedPairs(root, pairs, DatasetLayout(root).posemap_dir("test"), reverse),
            batch_size=batch,
            shuffle=False,
        )
        n = 0
        for data in loader:
            with torch.no_grad():
                fake = net(
                    data["imgA"].to(device),
                    torch.cat((data["mapA"], data["mapB"]), dim=1).to(device),
                )
            for i in range(fake.size(0)):
                for img, d in ((data["imgB"][i], real_dir), (fake[i], fake_dir)):
                    grid = torchvision.utils.make_grid(
                        img.detach().cpu(), nrow=1, padding=0, normalize=True
                    )
                    to_pil(grid).save(d / f"{n}@{data['fidB'][i]}.jpg")
                n += 1
        n_out += n
    return n_out


# --- model-only ------------------------------------------------------------------------


def model_only(
    ngf: int,
    batch: int,
    images: int,
    device: str,
    dtype: torch.dtype | None,
    channels_last: bool,
    h: int = 256,
    w: int = 176,
) -> float:
    """Images/s of NetG forward alone on in-memory uint8 batches (same path as the actors)."""
    from pipeline.generator.inference_api import generate_uint8
    from pipeline.generator.networks import build_generator

    net = build_generator(ngf, init=False).eval().to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    maps = np.zeros((batch, h, w, 36), np.uint8)
    maps[:, rng.integers(0, h, 36), rng.integers(0, w, 36), np.arange(36)] = 1

    def step():
        generate_uint8(net, img, maps, dtype=dtype, channels_last=channels_last)

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    steps = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def gpu_sweep(images: int) -> list[dict]:
    rows = []
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for cl in (False, True):
            for batch in (8, 16, 32, 64, 128):
                ips = model_only(64, batch, max(images, 4 * batch), "cuda", dtype, cl)
                rows.append(
                    {
                        "dtype": dtype_name,
                        "channels_last": cl,
                        "batch": batch,
                        "images_per_s": round(ips, 1),
                        "tflops": round(ips * NETG_GFLOP_256x176 / 1000, 1),
                    }
                )
    return rows


# --- the run -----------------------------------------------------------------------------


def stage_speed(cfg, ckpt: Path, pairs_csv: Path, out: Path, images: int, **kwargs) -> float:
    """Images/s of `run_generate` (Ray already up, so only the stage's own start-up counts)."""
    from stages.generate import run_generate

    start = time.perf_counter()
    result = run_generate(cfg, checkpoints=[str(ckpt)], out=str(out), pairs_file=str(pairs_csv),
                          **kwargs)  # fmt: skip
    assert result.rows_out == images and result.errors == 0, result.summary()
    return images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/bench_generate"),
        help="scratch directory (recreated)",
    )
    ap.add_argument(
        "--images",
        type=int,
        nargs="+",
        default=[320, 1200],
        help="run sizes in generated images (pairs x 2 directions)",
    )
    ap.add_argument("--identities", type=int, default=None, help="default: enough for --images")
    ap.add_argument("--poses", type=int, default=6)
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each; the median is reported")
    ap.add_argument(
        "--dedup",
        type=int,
        default=0,
        metavar="PAIRS",
        help="also time the stage with vs without deduplication on a symmetric set of about "
        "this many pairs (whole identities)",
    )
    args = ap.parse_args()

    from pipeline.cluster.runtime import best_device, init_ray
    from pipeline.core.config import Config
    from pipeline.generator.generation_plan import read_test_pairs
    from pipeline.generator.inference_api import autocast_dtype
    from pipeline.generator.networks import build_generator

    # Half the identities are test identities; each gives poses * (poses - 1) / 2 pairs.
    per_identity = args.poses * (args.poses - 1) // 2
    wanted = max(max(args.images) // 2, args.dedup)
    identities = args.identities or 2 * (-(-wanted // per_identity)) + 2
    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / "data"
    build_annotated_tree(root, identities, args.poses, test_fraction=0.5)
    all_pairs = read_test_pairs(root)
    ckpt = args.work / "ckpt" / "netG_1.pth"
    ckpt.parent.mkdir()
    torch.manual_seed(0)
    torch.save(build_generator(args.ngf, init=False).state_dict(), ckpt)

    cfg = Config()
    cfg.dataset.root = str(root)
    cfg.output.root = str(args.work / "out")
    cfg.generate.ngf = args.ngf
    cfg.generate.batch_size = args.batch_size
    init_ray(cfg.ray)  # cluster start-up is not part of the stage's time
    device = best_device()
    dtype = autocast_dtype(cfg.generate.dtype, device)
    report: dict = {
        "device": device,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ngf": args.ngf,
        "batch_size": args.batch_size,
        "sizes": [],
    }
    for images in args.images:
        pairs = distinct_pairs(all_pairs, images // 2)
        pairs_csv = args.work / f"pairs_{images}.csv"
        write_pairs_csv(pairs, pairs_csv)
        runs: dict[str, list[float]] = {
            "published": [], "stage": [], "stage_ray": [], "model_only": []
        }  # fmt: skip
        for rep in range(args.repeats):
            out = args.work / f"published_{images}_{rep}"
            start = time.perf_counter()
            assert (
                published_loop(root, pairs, ckpt, args.ngf, args.batch_size, out, device) == images
            )
            runs["published"].append(images / (time.perf_counter() - start))
            for name, executor in (("stage", "auto"), ("stage_ray", "ray")):
                cfg.generate.executor = executor
                out = args.work / f"{name}_{images}_{rep}"
                runs[name].append(stage_speed(cfg, ckpt, pairs_csv, out, images))
            runs["model_only"].append(
                model_only(args.ngf, args.batch_size, images, device, dtype,
                           cfg.generate.channels_last)
            )  # fmt: skip
        med = {k: statistics.median(v) for k, v in runs.items()}
        report["sizes"].append(
            {
                "images": images,
                "images_per_s": {k: round(v, 2) for k, v in med.items()},
                "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
                "stage_vs_published": round(med["stage"] / med["published"], 2),
                "stage_vs_model_only": round(med["stage"] / med["model_only"], 2),
                "stage_ray_vs_published": round(med["stage_ray"] / med["published"], 2),
                "stage_ray_vs_model_only": round(med["stage_ray"] / med["model_only"], 2),
            }
        )
        print(json.dumps(report["sizes"][-1]), flush=True)
    if args.dedup:
        cfg.generate.executor = "auto"
        pairs = symmetric_pairs(all_pairs, args.dedup)
        pairs_csv = args.work / "pairs_symmetric.csv"
        write_pairs_csv(pairs, pairs_csv)
        images = 2 * len(pairs)
        speeds = {
            name: stage_speed(cfg, ckpt, pairs_csv, args.work / name, images, dedup=dedup)
            for name, dedup in (("stage_dedup", True), ("stage_no_dedup", False))
        }
        # Both runs write every file; per second of the same distinct work (goal >= 1.8x).
        report["dedup"] = {
            "symmetric_pairs": len(pairs),
            "images": images,
            "images_per_s": {k: round(v, 2) for k, v in speeds.items()},
            "speedup": round(speeds["stage_dedup"] / speeds["stage_no_dedup"], 2),
        }
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
        report["gpu_model_only_ngf64"] = gpu_sweep(256)
    else:
        report["gpu"] = "none: GPU targets not measured"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
