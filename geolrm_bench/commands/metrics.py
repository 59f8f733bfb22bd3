"""``geolrm-bench metrics``: image and geometry metrics between files on disk.

``metrics images PRED_DIR GT_DIR``: every ``*.png`` under PRED_DIR is paired with the
PNG at the same relative path under GT_DIR; RGBA images are composited on white;
PSNR, SSIM (and LPIPS, VGG by default) per pair. Unpaired files are reported.

``metrics geometry PRED GT``: Chamfer distance (mean of both directions' mean
Euclidean nearest-neighbour distance; ``--squared`` for squared distances) and
F-score at each ``--tau``. PRED is a 3DGS ``.ply`` (detected by its ``opacity``
vertex property: Gaussian centres with opacity > ``--opacity-threshold``), a mesh
(surface sampled) or a point cloud (``.ply``/``.obj``/... via trimesh, or ``.npy``
``[N, 3]``); GT is a mesh (surface sampled; a point cloud is used as is). Both are
taken as given, in ONE frame: nothing is aligned or rescaled.

With ``--out FILE.csv`` the rows are also written (atomically) as CSV:
``name, psnr, ssim, lpips`` or ``name, chamfer, fscore@TAU...``.

Exit status: 0 every file scored; 1 (images) some PNGs had no counterpart (listed on
stderr; the others scored and written); 2 bad input (unreadable file, ``--out`` a folder).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import check_output_file


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "metrics", help="PSNR/SSIM/LPIPS between image folders, Chamfer/F-score between shapes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="metrics_command", metavar="KIND", required=True)

    im = sub.add_parser("images", help="PSNR / SSIM / LPIPS of PNG pairs matched by relative path")
    im.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predicted PNGs")
    im.add_argument("gt_dir", type=Path, metavar="GT_DIR", help="folder of ground-truth PNGs")
    im.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex", "none"],
                    help="LPIPS backbone (default vgg, as the GeoLRM test step; 'none' skips LPIPS)")
    im.add_argument("--device", default="cpu", help="device of the LPIPS network (default cpu)")
    im.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="also write the rows as CSV")
    im.add_argument("--quiet", action="store_true", help="no progress bar")
    im.set_defaults(func=run_images)

    ge = sub.add_parser("geometry", help="Chamfer distance and F-score of a prediction against a GT mesh")
    ge.add_argument("pred", type=Path, metavar="PRED", help="3DGS .ply, mesh, point cloud or .npy [N, 3]")
    ge.add_argument("gt", type=Path, metavar="GT", help="ground-truth mesh (or point cloud)")
    ge.add_argument("--tau", type=float, nargs="+", default=[0.2], help="F-score thresholds (default 0.2)")
    ge.add_argument("--num-points", type=int, default=16000, help="points per set (default 16000)")
    ge.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ge.add_argument("--opacity-threshold", type=float, default=0.05,
                    help="keep Gaussians with opacity above this (default 0.05)")
    ge.add_argument("--squared", action="store_true", help="Chamfer of squared distances")
    ge.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="also write the row as CSV")
    ge.set_defaults(func=run_geometry)


# --------------------------------------------------------------------------- helpers
def read_png_rgb(path: Path, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``[3, H, W]`` float32 in [0, 1]; alpha composited over ``background``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                gray = np.asarray(im, dtype=np.float64) / 65535.0
                rgba = np.stack([gray, gray, gray, np.ones_like(gray)], -1)
            else:
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
    except FileNotFoundError:
        raise BenchError("file not found", path) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BenchError(f"unreadable image ({one_line(e, None, typed=False)})", path) from None
    a = rgba[..., 3:]
    rgb = rgba[..., :3] * a + np.asarray(background) * (1.0 - a)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32).clip(0, 1)


def _pngs(folder: Path) -> set[Path]:
    if not folder.exists():
        raise BenchError("folder not found", folder)
    if not folder.is_dir():
        raise BenchError("not a folder", folder)
    return {p.relative_to(folder) for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file()}


def pair_images(pred_dir: Path, gt_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``(paired, only_in_pred, only_in_gt)`` relative paths, sorted."""
    pred, gt = _pngs(pred_dir), _pngs(gt_dir)
    return sorted(pred & gt), sorted(pred - gt), sorted(gt - pred)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    from geolrm_bench.io import write_text_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _print_table(header: list[str], rows: list[list]) -> None:
    from tabulate import tabulate

    print(tabulate(rows, headers=header, floatfmt=".4f"))


# --------------------------------------------------------------------------- images
def image_metrics_table(pred_dir: Path, gt_dir: Path, lpips_net: str | None = "vgg", device: str = "cpu",
                        progress: bool = False) -> tuple[list[list], list[Path], list[Path]]:
    """Rows ``[name, psnr, ssim, lpips]`` for each pair, and the unpaired paths of each side."""
    import torch
    from tqdm import tqdm

    from geolrm_bench.metrics import LPIPS, psnr, ssim

    paired, only_pred, only_gt = pair_images(pred_dir, gt_dir)
    if not paired:
        raise BenchError(f"no PNG pairs: {len(only_pred)} PNGs in {pred_dir}, {len(only_gt)} in {gt_dir}, "
                         "none at the same relative path")
    metric = LPIPS(lpips_net, device=device) if lpips_net else None
    rows = []
    for rel in tqdm(paired, desc="metrics", unit="img", disable=not progress, file=sys.stderr):
        p = torch.from_numpy(read_png_rgb(pred_dir / rel))[None]  # [1, 3, H, W]
        g = torch.from_numpy(read_png_rgb(gt_dir / rel))[None]
        if p.shape != g.shape:
            raise BenchError(f"size {p.shape[-1]}x{p.shape[-2]} differs from the ground truth's "
                             f"{g.shape[-1]}x{g.shape[-2]}", pred_dir / rel)
        if min(p.shape[-2:]) < 11:
            raise BenchError(f"image is {p.shape[-1]}x{p.shape[-2]}, SSIM needs at least 11x11",
                             pred_dir / rel)
        lp = float(metric(p, g)[0]) if metric is not None else float("nan")
        rows.append([rel.as_posix(), float(psnr(p, g)[0]), float(ssim(p, g)[0]), lp])
    return rows, only_pred, only_gt


def run_images(args) -> int:
    if args.out is not None:
        check_output_file(args.out)  # before the work, not after it
    net = None if args.lpips_net == "none" else args.lpips_net
    rows, only_pred, only_gt = image_metrics_table(args.pred_dir, args.gt_dir, net, args.device,
                                                   progress=not args.quiet)
    for rel in only_pred:
        print(f"missing in GT: {rel.as_posix()}", file=sys.stderr)
    for rel in only_gt:
        print(f"missing in prediction: {rel.as_posix()}", file=sys.stderr)
    header = ["name", "psnr", "ssim", "lpips"]
    a = np.asarray([r[1:] for r in rows], dtype=np.float64)
    _print_table(header, rows + [[f"mean ({len(rows)})", *a.mean(axis=0)]])
    if only_pred or only_gt:
        print(f"{len(rows)} pairs; {len(only_pred)} predictions without GT, {len(only_gt)} GT without "
              "prediction (listed on stderr)")
    if args.out is not None:
        _write_csv(args.out, header, rows)
        print(f"wrote {args.out}")
    return 1 if (only_pred or only_gt) else 0  # 1: some files could not be scored (listed on stderr)


# --------------------------------------------------------------------------- geometry
def _is_gaussian_ply(path: Path) -> bool:
    """True when ``path`` is a PLY whose vertex element has an ``opacity`` property (3DGS)."""
    if path.suffix.lower() != ".ply":
        return False
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.startswith(b"ply"):
        return False
    header = head.split(b"end_header", 1)[0].decode("ascii", "replace").splitlines()
    element = None
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"] and len(parts) >= 2:
            element = parts[1]
        elif parts[:1] == ["property"] and element == "vertex" and parts[-1] == "opacity":
            return True
    return False


def load_shape_points(path: Path, n: int, seed: int, opacity_threshold: float = 0.05,
                      role: str = "PRED") -> tuple[np.ndarray, str]:
    """Points ``[<=n, 3]`` standing for the shape in ``path`` and how they were obtained."""
    from geolrm_bench.metrics import prediction_points, sample_surface_points
    from geolrm_bench.metrics.geometry import _subsample, as_points

    if not path.exists():
        raise BenchError("file not found", path)
    if not path.is_file():
        raise BenchError("not a file", path)
    try:
        if path.suffix.lower() == ".npy":
            pts = np.load(path, allow_pickle=False)
            return _subsample(as_points(pts, str(path)), n, seed), "points (.npy)"
        if _is_gaussian_ply(path):
            from geolrm_bench.model.ply import load_ply

            g = load_ply(path)
            return prediction_points(g, method="gaussians", n=n, seed=seed,
                                     opacity_threshold=opacity_threshold), \
                f"Gaussian centres (opacity > {opacity_threshold:g})"
        import trimesh

        loaded = trimesh.load(path)
        if isinstance(loaded, trimesh.Scene):
            geoms = list(loaded.dump()) if hasattr(loaded, "dump") else list(loaded.geometry.values())
            meshes = [m for m in geoms if isinstance(m, trimesh.Trimesh) and len(m.faces)]
            if meshes:
                loaded = trimesh.util.concatenate(meshes)
            elif geoms:
                loaded = trimesh.PointCloud(np.concatenate([np.asarray(m.vertices) for m in geoms]))
            else:
                raise BenchError("empty scene: no mesh or points", path)
        if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
            return sample_surface_points(loaded, n=n, seed=seed), "mesh surface samples"
        verts = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
        return _subsample(as_points(verts, str(path)), n, seed), "point cloud"
    except BenchError:
        raise
    except ValueError as e:
        raise BenchError(f"{role}: {one_line(e, None, typed=False)}", path) from None
    except Exception as e:  # trimesh / numpy loaders raise many types on bad files
        raise BenchError(f"{role}: unreadable shape ({one_line(e, None, typed=True)})",
                         path) from None


def run_geometry(args) -> int:
    from geolrm_bench.metrics import geometry_metrics, tau_key

    if args.out is not None:
        check_output_file(args.out)
    if args.num_points <= 0:
        raise BenchError(f"--num-points must be positive, got {args.num_points}")
    if any(not t > 0 for t in args.tau):
        raise BenchError(f"--tau thresholds must be positive, got {args.tau}")
    pred, pred_how = load_shape_points(args.pred, args.num_points, args.seed, args.opacity_threshold, "PRED")
    gt, gt_how = load_shape_points(args.gt, args.num_points, args.seed, args.opacity_threshold, "GT")
    m = geometry_metrics(pred, gt, taus=args.tau, frame="gt", squared=args.squared)
    header = ["name", "chamfer"] + [tau_key(t) for t in args.tau]
    row = [args.pred.name, m["chamfer"]] + [m[tau_key(t)] for t in args.tau]
    print(f"PRED {args.pred}: {len(pred)} {pred_how}; GT {args.gt}: {len(gt)} {gt_how}; "
          f"Chamfer = {'squared' if args.squared else 'Euclidean'} distances, both files' own frame")
    _print_table(header, [row])
    if args.out is not None:
        _write_csv(args.out, header, [row])
        print(f"wrote {args.out}")
    return 0
