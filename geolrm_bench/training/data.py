"""Training data: a folder written by ``geolrm-bench occupancy-gt`` as a torch ``Dataset``.

Layout (``pipelines/occupancy_gt.py``)::

    DIR/renders/<object>/<NNNNN>/...      40 GObjaverse views (PNG, JSON camera, _nd.exr depth)
    DIR/occupancy/<object>/pts.npy        uint8 [N, 3] voxel indices at R_gt (meta.json: resolution)
    DIR/occupancy/<object>/meta.json      the object's record (its ``source`` names the views folder
                                          when the input was already rendered elsewhere)

An object is skipped, with one warning line naming it, when its ``pts.npy`` is missing or empty,
when it has fewer than 40 complete views, or when a depth map holds NaN (checked up front with
``check_depth``; the official loader asserts instead and moves to the next item). A folder
without any usable object is a one-line :class:`BenchError`.

GT occupancy at R_gt is reduced to the model grid R (R_gt % R == 0) by ``index * R // R_gt``:
voxel k at R_gt has its centre at ``k / R_gt - 0.5``, which lies in model voxel ``floor(k R / R_gt)``
of width ``1 / R`` starting at ``j / R - 0.5``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geolrm_bench import gobjaverse
from geolrm_bench.errors import BenchError
from geolrm_bench.occupancy import PTS_FILENAME, load_pts

NUM_VIEWS = 40


class TrainDataWarning(UserWarning):
    """A training object was skipped (the message names it and the reason, one line)."""


@dataclass(frozen=True)
class TrainObject:
    name: str  # relative object name (may contain '/')
    views_dir: Path  # folder holding 00000/ .. 00039/
    pts: Path  # its pts.npy
    resolution: int  # R_gt of pts.npy


def _count_views(views_dir: Path) -> int:
    n = 0
    for i in range(NUM_VIEWS):
        p = gobjaverse.view_paths(views_dir, i)
        n += all(q.is_file() for q in p.values())
    return n


def _occupancy_names(occ_root: Path) -> set[str]:
    if not occ_root.is_dir():
        return set()
    names = set()
    for fname in (PTS_FILENAME, "meta.json"):
        names |= {p.parent.relative_to(occ_root).as_posix() for p in occ_root.rglob(fname)}
    return names


def _render_names(render_root: Path) -> set[str]:
    if not render_root.is_dir():
        return set()
    return {p.relative_to(render_root).as_posix() for p in gobjaverse.list_rendered_objects(render_root)}


def find_objects(data_dir: str | Path, check_depth: bool = True,
                 warn: bool = True) -> tuple[list[TrainObject], list[tuple[str, str]]]:
    """Usable objects of ``data_dir`` (sorted by name) and the skipped ones ``(name, reason)``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BenchError("training data folder not found", data_dir)
    occ_root, render_root = data_dir / "occupancy", data_dir / "renders"
    names = sorted(_occupancy_names(occ_root) | _render_names(render_root))
    good: list[TrainObject] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        meta_path = occ_root / name / "meta.json"
        meta = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
        views_dir = render_root / name
        if not views_dir.is_dir() and meta.get("source"):
            views_dir = Path(meta["source"])
        reason = _check_object(occ_root / name / PTS_FILENAME, views_dir, check_depth)
        if reason:
            skipped.append((name, reason))
            if warn:
                warnings.warn(f"skipping training object {name!r}: {reason}", TrainDataWarning, stacklevel=2)
            continue
        good.append(TrainObject(name, views_dir, occ_root / name / PTS_FILENAME,
                                int(meta.get("resolution", 128))))
    if not good:
        why = "; ".join(f"{n}: {r}" for n, r in skipped[:3]) or "no object folders found"
        raise BenchError(f"no usable training object (expected renders/<object>/ with 40 views and "
                         f"occupancy/<object>/pts.npy; {why})", data_dir)
    return good, skipped


def _check_object(pts: Path, views_dir: Path, check_depth: bool) -> str | None:
    if not pts.is_file():
        return f"missing {PTS_FILENAME} ({pts})"
    if not views_dir.is_dir():
        return f"missing views folder {views_dir}"
    n = _count_views(views_dir)
    if n < NUM_VIEWS:
        return f"has {n} of {NUM_VIEWS} complete views in {views_dir}"
    try:
        arr = load_pts(pts)
    except BenchError as e:
        return str(e)
    if len(arr) == 0:
        return f"empty {PTS_FILENAME}"
    if check_depth:
        for i in range(NUM_VIEWS):
            try:
                _, depth = gobjaverse.read_nd_exr(gobjaverse.view_paths(views_dir, i)["exr"])
            except BenchError as e:
                return str(e)
            if np.isnan(depth).any():
                return f"NaN depth in view {gobjaverse.view_name(i)}"
    return None


def occupancy_grid(indices: np.ndarray, source_res: int, grid_res: int) -> Tensor:  # -> [R, R, R] float
    """Dense 0/1 grid at ``grid_res`` from voxel indices at ``source_res`` (see module docstring)."""
    if source_res % grid_res:
        raise BenchError(f"occupancy resolution {source_res} is not a multiple of the model grid {grid_res}")
    idx = torch.from_numpy(indices.astype(np.int64)) * grid_res // source_res
    grid = torch.zeros(grid_res, grid_res, grid_res)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = 1.0
    return grid


def _resize(x: Tensor, size: int, mode: str) -> Tensor:  # [V, C, H, W]
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    return F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] >= size else "bilinear",
                         **({} if x.shape[-1] >= size else {"align_corners": False})).clamp(0, 1)


class TrainDataset(torch.utils.data.Dataset):
    """Objects of an occupancy-gt folder; ``load(i, views)`` reads the views a step needs.

    ``image_size``: px of the model inputs (on white); ``render_size``: px of the targets (alpha,
    depth, and the rgb on white; the training step re-composites it on its background).
    """

    def __init__(self, data_dir: str | Path, grid_res: int, image_size: int, render_size: int,
                 objects: list[TrainObject] | None = None, check_depth: bool = True):
        if objects is None:
            objects, self.skipped = find_objects(data_dir, check_depth=check_depth)
        else:
            self.skipped = []
        self.objects = objects
        self.grid_res, self.image_size, self.render_size = grid_res, image_size, render_size

    def __len__(self) -> int:
        return len(self.objects)

    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def load(self, i: int, views: list[int], occupancy: bool = True) -> dict[str, Tensor]:
        """Object ``i``'s ``views``: images ``[V,3,S,S]`` (white bg), alpha/depth/rgb targets
        ``[V,*,s,s]``, OpenGL ``c2w`` ``[V,4,4]``, normalised ``K`` ``[V,3,3]``, occupancy ``[R,R,R]``."""
        obj = self.objects[i]
        size = max(self.image_size, self.render_size)
        vb = gobjaverse.load_views(obj.views_dir, views, background=(1.0, 1.0, 1.0), resolution=size)
        out = {
            "images": _resize(vb.images, self.image_size, "area"),
            "target_rgb_white": _resize(vb.images, self.render_size, "area"),
            "target_alpha": _resize(vb.masks, self.render_size, "area"),
            "target_depth": _resize(vb.depths, self.render_size, "nearest"),
            "c2w": vb.c2w_opengl,
            "K": vb.intrinsics,
        }
        if occupancy:
            out["occupancy"] = occupancy_grid(load_pts(obj.pts), obj.resolution, self.grid_res)
        return out

    def __getitem__(self, i: int) -> dict[str, Tensor]:  # all 40 views (inspection, not training)
        return self.load(i, list(range(NUM_VIEWS)))


class ShardedOrder:
    """Deterministic data order, sharded per worker, a pure function of the update counter.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``, padded to a multiple of ``world`` by
    repeating its head (as ``DistributedSampler``); worker ``rank`` takes every ``world``-th item.
    Micro-batch ``m`` of update ``s`` on a worker holds that worker's stream items
    ``[(s * accumulate + m) * batch, ... + batch)``: the data position of a checkpoint is its
    update counter, so a resumed run reads exactly what the uninterrupted run would have read.
    """

    def __init__(self, n: int, seed: int, rank: int, world: int, batch_size: int, accumulate: int):
        if n < 1:
            raise BenchError("empty training set")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.batch_size, self.accumulate = batch_size, accumulate
        self.per_epoch = -(-n // world)  # items per worker per epoch

    def _epoch(self, e: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, e]).permutation(self.n)
        total = self.per_epoch * self.world
        if total > self.n:
            perm = np.concatenate([perm, np.resize(perm, total - self.n)])
        return perm[self.rank::self.world]

    def items(self, step: int, micro: int) -> list[int]:
        start = (step * self.accumulate + micro) * self.batch_size
        out = []
        for k in range(start, start + self.batch_size):
            e, j = divmod(k, self.per_epoch)
            out.append(int(self._epoch(e)[j]))
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.accumulate * self.batch_size / self.per_epoch
