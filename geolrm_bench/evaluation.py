"""The evaluation's three per-object stages, as library code (no Ray, no run-level state).

The run's options are :class:`geolrm_bench.eval_config.EvalConfig`.

1. :func:`prepare_object` (CPU): render the views the protocol reads (inputs + test views, of
   the GObjaverse 40) into the render cache unless present, sample the ground-truth surface
   points into the GT cache -> :class:`PreparedObject`.
2. :class:`Evaluator` (the one model actor): a :class:`geolrm_bench.methods.Method` and one
   LPIPS network, built once; ``predict`` -> :class:`MethodOutput` (test views, points, cost,
   LPIPS per view).
3. :func:`score_object` (CPU): PSNR / SSIM / geometry (:mod:`geolrm_bench.scoring`) ->
   :class:`geolrm_bench.scoring.ObjectRecord`, written atomically.

Each stage never raises for a bad object: its failure travels in ``status`` / ``error`` to the
record. The run's per-object store (:func:`record_path`, :func:`finished`, :func:`load_records`)
makes runs resumable. Frames and cameras as :mod:`geolrm_bench.methods`; the caches hold the
GObjaverse layout (:mod:`geolrm_bench.gobjaverse`) and ``<name>_n<N>_s<seed>.npz`` ground-truth
points (GT frame, ``to_normalized``, ``unit_m``).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geolrm_bench import datasets, gobjaverse, pictures
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import read_json, save_npz_atomic, write_json_atomic
from geolrm_bench.methods import MethodSpec, build_method, safe_name
from geolrm_bench.protocol import Protocol
from geolrm_bench.scoring import ObjectRecord, geometry_scores, image_scores


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
@dataclass
class ObjectSource:
    """One object to evaluate: a dataset ref (rendered into the cache) or an existing render folder."""

    name: str
    ref: Any = None  # geolrm_bench.datasets.ObjectRef (picklable) or None
    render_dir: str | None = None  # existing GObjaverse-format object folder


def _is_rendered_root(root: Path) -> bool:
    if gobjaverse.is_gobjaverse_object(root):
        return True
    try:
        return len(gobjaverse.list_rendered_objects(root)) > 0
    except (BenchError, FileNotFoundError, NotADirectoryError):
        return False


def resolve_sources(dataset: str, root: str | None) -> tuple[list[ObjectSource], str]:
    """Every object of ``dataset`` (a kind, or a folder of renders / meshes) and the root used."""
    if dataset and (Path(dataset).is_dir() and root is None):
        root_p = Path(dataset)
    else:
        root_p = Path(root) if root else datasets.default_root(dataset)
    if not root_p.exists():
        raise BenchError(f"dataset root not found (dataset {dataset!r}; pass --root)", root_p)
    if _is_rendered_root(root_p):
        if gobjaverse.is_gobjaverse_object(root_p):
            dirs = [root_p]
        else:
            dirs = [Path(d) for d in gobjaverse.list_rendered_objects(root_p)]
        return [ObjectSource(name=_rendered_name(root_p, d), render_dir=str(d)) for d in dirs], str(root_p)
    kind = dataset if not Path(dataset).is_dir() else datasets.detect_dataset(root_p)
    refs = datasets.list_objects(kind, root_p)
    if not refs:
        raise BenchError(f"no objects of kind {kind!r} found", root_p)
    return [ObjectSource(name=r.name, ref=r) for r in refs], str(root_p)


def _rendered_name(root: Path, d: Path) -> str:
    try:
        rel = d.resolve().relative_to(root.resolve())
        name = str(rel) if str(rel) != "." else d.name
    except ValueError:
        name = d.name
    return name.replace(os.sep, "__")


# --------------------------------------------------------------------------------------------
# stage 1 (CPU): render if needed + ground-truth points
# --------------------------------------------------------------------------------------------
@dataclass
class PreparedObject:
    """Stage 1's output: where the object's views and ground-truth points are."""

    name: str
    status: str = "ok"
    error: str = ""
    object_dir: str | None = None  # GObjaverse-format folder of the 40 views
    gt_points: str | None = None  # cached .npz of GT points, None when the object has no mesh
    to_normalized: list | None = None  # [4, 4] GT frame -> normalised frame
    render_s: float = 0.0
    gt_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def gt_cache_path(gt_root: str | Path, name: str, protocol: Protocol) -> Path:
    """The ground-truth point cache file of one object under ``gt_root``."""
    return Path(gt_root) / f"{safe_name(name)}_n{protocol.num_gt_points}_s{protocol.gt_seed}.npz"


def prepare_object(src: ObjectSource, renders_root: str, gt_root: str, protocol: Protocol) -> PreparedObject:
    """Render the object into ``renders_root`` unless the cache holds the protocol's views
    (:meth:`Protocol.used_views`) at its resolution, and cache its ground-truth surface points
    (GT frame, ``[num_gt_points, 3]`` float64) under ``gt_root``. Never raises: a bad object is a
    failed :class:`PreparedObject`.

    Only the views the protocol reads are rendered (10 of 40 at N = 6: a quarter of the
    rendering time); a cached render at the same resolution that lacks some of them (another N
    of a sweep) is replaced by all 40 views once, so later protocols always find theirs."""
    prep = PreparedObject(name=src.name)
    try:
        asset = None
        if src.render_dir is not None:
            prep.object_dir = src.render_dir
            asset = _asset_from_render_metadata(Path(src.render_dir), prep.warnings)
        else:
            object_dir = Path(renders_root) / src.name  # render_object writes <root>/<asset.name>
            views = _views_to_render(object_dir, protocol)
            if views is None or views:
                from geolrm_bench import rendering  # pyrender/OpenGL: only when something is rendered

                asset = src.ref.load()
                t0 = time.perf_counter()
                object_dir = Path(rendering.render_object(asset, renders_root, views=views,
                                                          resolution=protocol.resolution))
                prep.render_s = time.perf_counter() - t0
            prep.object_dir = str(object_dir)
        gt_path = gt_cache_path(gt_root, src.name, protocol)
        if gt_path.exists():
            with np.load(gt_path) as z:
                prep.to_normalized = z["to_normalized"].tolist()
            prep.gt_points = str(gt_path)
        else:
            if asset is None and src.ref is not None:
                asset = src.ref.load()
            if asset is not None:
                from geolrm_bench.metrics import (
                    sample_surface_points,  # torch/trimesh: only when GT points are sampled
                )

                t0 = time.perf_counter()
                pts = np.asarray(sample_surface_points(asset.gt_mesh(), n=protocol.num_gt_points,
                                                       seed=protocol.gt_seed), dtype=np.float64)
                save_npz_atomic(gt_path, points=pts, to_normalized=np.asarray(asset.to_normalized),
                                unit_m=np.float64(getattr(asset, "unit_m", 1.0) or 1.0))
                prep.gt_s = time.perf_counter() - t0
                prep.gt_points = str(gt_path)
                prep.to_normalized = np.asarray(asset.to_normalized).tolist()
                prep.warnings += list(getattr(asset, "warnings", []) or [])
            else:
                prep.warnings.append("no ground-truth mesh for this rendered object: "
                                     "geometry metrics skipped")
    except Exception as e:  # a bad object is a record, not a crash
        prep.status, prep.error = "failed", one_line(e)
    return prep


def _views_to_render(object_dir: Path, protocol: Protocol) -> list[int] | None:
    """What :func:`prepare_object` renders for ``object_dir``: ``[]`` nothing (its cached render,
    read from ``metadata.json``, has the protocol's views at its resolution), ``None`` all 40
    (a render at this resolution lacking some of them), else the protocol's views (no usable
    render: absent, unreadable, or another resolution)."""
    try:
        meta = read_json(object_dir / "metadata.json")
        resolution = int(meta.get("resolution"))
        cached = {int(v) for v in meta.get("views", range(gobjaverse.NUM_VIEWS))}
    except (BenchError, TypeError, ValueError, AttributeError):
        return protocol.used_views
    if resolution != protocol.resolution:
        return protocol.used_views
    return [] if cached.issuperset(protocol.used_views) else None


def _asset_from_render_metadata(object_dir: Path, warnings: list[str]):
    """The source asset of a rendered object when its metadata.json names a loadable source."""
    meta_path = object_dir / "metadata.json"
    if not meta_path.exists():
        return None
    try:
        meta = read_json(meta_path)
        path = meta.get("path")
        source = str(meta.get("source") or "")
        if not path or not Path(path).exists() or not source:
            return None
        parts = source.split("/")
        kind, dataset = parts[-1], (parts[0] if len(parts) > 1 else None)
        name = str(meta.get("object") or object_dir.name)
        return datasets.ObjectRef(name, Path(path), kind, dataset).load()
    except Exception as e:
        warnings.append(f"source mesh named in {meta_path} not loadable ({one_line(e)})")
        return None


# --------------------------------------------------------------------------------------------
# stage 2 (the one actor): a method + LPIPS
# --------------------------------------------------------------------------------------------
@dataclass
class MethodOutput:
    """Stage 2's output: the method's prediction, the ground-truth test views and LPIPS."""

    status: str = "ok"
    error: str = ""
    images: np.ndarray | None = None  # [T, 3, H, W] predicted test views in [0, 1]
    gt_images: np.ndarray | None = None  # [T, 3, H, W] ground-truth test views
    points: np.ndarray | None = None  # [M, 3] prediction points, normalised frame (None: no geometry)
    lpips: list[float] = field(default_factory=list)  # per test view
    inference_s: float = float("nan")
    memory_gb: float = float("nan")
    num_gaussians: int = 0
    device: str = ""
    reconstruct_s: float = float("nan")
    lpips_s: float = 0.0
    extra: dict = field(default_factory=dict)
    traceback: str = ""


class Evaluator:
    """The actor body: one method (model) and one LPIPS network, built once."""

    def __init__(self, spec: MethodSpec, lpips_net: str = "vgg", lpips: Any = None):
        """``lpips``: an already built :class:`geolrm_bench.metrics.LPIPS` on the same device to
        share (the baselines reuse the model's network), else one is built."""
        from geolrm_bench.metrics import LPIPS  # torch/torchvision: only in the model actor

        self.spec = spec
        self.method = build_method(spec)
        if lpips is not None and getattr(lpips, "net", None) == lpips_net \
                and str(lpips.device) == str(self.method.device):
            self.lpips = lpips
        else:
            self.lpips = LPIPS(net=lpips_net, device=self.method.device)

    def info(self) -> dict:
        """The model's description for the report (kind, preset, weights hash, device)."""
        import torch  # heavy: only in the actor

        from geolrm_bench.metrics.cost import cpu_name  # torch via metrics: only in the model actor

        dev = self.method.device
        name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else cpu_name()
        return {"checkpoint_kind": str(self.method.checkpoint_kind), "preset": self.method.preset,
                "checkpoint_sha256": self.method.checkpoint_sha256, "device": dev, "device_name": name,
                "model_description": self.method.description}

    def predict(self, prep: PreparedObject, protocol: Protocol) -> MethodOutput:
        """Reconstruct + render the test views + LPIPS. Never raises: errors become the output."""
        if not prep.ok:
            return MethodOutput(status="failed", error=prep.error or "preparation failed")
        try:
            import torch  # heavy: only in the actor

            t0 = time.perf_counter()
            pred = self.method.predict(prep.object_dir, protocol, prep.name)
            t1 = time.perf_counter()
            vt = gobjaverse.load_views(prep.object_dir, views=protocol.test_views,
                                       background=protocol.background, resolution=protocol.resolution)
            gt = vt.images.float().clamp(0, 1)
            p = torch.from_numpy(np.ascontiguousarray(pred.images)).float()
            if p.shape != gt.shape:
                raise BenchError(f"predicted test views have shape {tuple(p.shape)}, "
                                 f"expected {tuple(gt.shape)}")
            with torch.no_grad():
                lp = self.lpips(p, gt)
            lp = np.asarray(torch.as_tensor(lp).detach().float().cpu().reshape(-1))
            return MethodOutput(images=pred.images, gt_images=gt.numpy(), points=pred.points,
                                lpips=lp.tolist(), inference_s=pred.inference_s, memory_gb=pred.memory_gb,
                                num_gaussians=pred.num_gaussians, device=pred.device or self.method.device,
                                reconstruct_s=t1 - t0, lpips_s=time.perf_counter() - t1, extra=pred.extra)
        except Exception as e:
            return MethodOutput(status="failed", error=one_line(e), traceback=traceback.format_exc(limit=4))


# --------------------------------------------------------------------------------------------
# stage 3 (CPU): metrics and the per-object record
# --------------------------------------------------------------------------------------------
def score_object(prep: PreparedObject, out: MethodOutput, protocol: Protocol, record_file: str,
                 meta: dict, picture_file: str | None = None) -> ObjectRecord:
    """PSNR / SSIM per test view, Chamfer / F-score (three frames); writes the record atomically.

    ``meta``: ``method``, ``dataset``, ``run_key`` of the run. ``picture_file``: where to write
    the object's qualitative grid (:func:`geolrm_bench.pictures.write_object_picture`; a
    failure there is a warning, not a failed object). Stage times go into the record
    (``render_s`` / ``gt_points_s`` / ``load_s`` / ``inference_s`` / ``raster_s`` / ``lpips_s``
    / ``image_metrics_s`` / ``geometry_s`` / ``picture_s``).
    """
    t0 = time.perf_counter()
    rec = ObjectRecord(object=prep.name, **meta, num_input_views=protocol.num_input_views,
                       render_s=prep.render_s + prep.gt_s, warnings=list(prep.warnings))
    try:
        if not prep.ok:
            raise BenchError(prep.error or "preparation failed")
        if out.status != "ok":
            raise BenchError(out.error or "prediction failed")
        t_img = time.perf_counter()
        ps, ss = image_scores(out.images, out.gt_images)
        rec.image_metrics_s = time.perf_counter() - t_img
        lp = np.asarray(out.lpips, dtype=np.float64).reshape(-1)
        for i, v in enumerate(protocol.test_views):
            rec.views.append({"view": int(v), "psnr": float(ps[i]), "ssim": float(ss[i]),
                              "lpips": float(lp[i])})
        rec.psnr, rec.ssim, rec.lpips = float(ps.mean()), float(ss.mean()), float(lp.mean())
        rec.fill_missing_geometry()
        if out.points is not None and prep.gt_points:
            t_geo = time.perf_counter()
            with np.load(prep.gt_points) as z:
                gt_pts, to_norm = z["points"], z["to_normalized"]
                unit_m = float(z["unit_m"]) if "unit_m" in z.files else 1.0
            rec.gt_unit_m = unit_m
            for k, v in geometry_scores(out.points, gt_pts, to_norm, unit_m, protocol.fscore_tau).items():
                setattr(rec, k, v)
            rec.geometry_s = time.perf_counter() - t_geo
        elif out.points is None:
            rec.warnings.append("method gave no geometry: chamfer/fscore not computed")
        rec.inference_s, rec.memory_gb = float(out.inference_s), float(out.memory_gb)
        rec.num_gaussians, rec.device = int(out.num_gaussians), out.device
        rec.reconstruct_s = float(out.reconstruct_s)
        rec.memory_method = (out.extra or {}).get("memory_method", "")
        rec.lpips_s = float(out.lpips_s)
        extra = out.extra or {}
        rec.gt_points_s = float(prep.gt_s)
        rec.load_s, rec.raster_s = extra.get("load_s"), extra.get("raster_s")
        if extra.get("warning"):
            rec.warnings.append(extra["warning"])
    except Exception as e:
        rec.status, rec.error = "failed", one_line(e)
    rec.metrics_s = time.perf_counter() - t0 + float(out.lpips_s or 0.0)
    if picture_file and rec.status == "ok":
        t_pic = time.perf_counter()
        try:
            inputs = input_thumbnails(prep.object_dir, protocol.input_views, protocol.background,
                                      min(pictures.TILE, protocol.resolution))
            pictures.write_object_picture(picture_file, inputs, out.gt_images, out.images,
                                          tile=min(pictures.TILE, protocol.resolution))
        except Exception as e:  # a picture is a nice-to-have: never fails the object
            rec.warnings.append(f"picture not written: {one_line(e)}")
        rec.picture_s = time.perf_counter() - t_pic
    write_json_atomic(record_file, rec.to_dict())
    return rec


def input_thumbnails(object_dir: str, views, background, size: int) -> np.ndarray:
    """The input views' PNGs composited on ``background``, box-downscaled to ``size`` px:
    ``[N, 3, size, size]`` float32 in [0, 1] (PNGs only; no depth/normal EXRs are read)."""
    out = []
    bg = np.asarray(background, np.float32)
    for v in views:
        rgba = gobjaverse.read_png_rgba(gobjaverse.view_paths(object_dir, int(v))["png"])
        rgb = rgba[..., :3] * rgba[..., 3:] + bg * (1 - rgba[..., 3:])
        im = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BOX)
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(out)


# --------------------------------------------------------------------------------------------
# the per-object record store of a run
# --------------------------------------------------------------------------------------------
def record_path(run_dir: Path, name: str) -> Path:
    """``<run>/objects/<safe name>.json``."""
    return Path(run_dir) / "objects" / f"{safe_name(name)}.json"


def finished(path: Path, key: str | None = None) -> bool:
    """True when the object's record exists, parses, says ok and (when ``key`` is given) was
    made under the same protocol and method (the run key); failed or stale ones are redone."""
    try:
        rec = json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return False
    return bool(rec) and rec.get("status") == "ok" and (key is None or rec.get("run_key") == key)


def load_records(run_dir: Path, names: list[str]) -> list[dict]:
    """The records of ``names`` that exist (an unreadable one becomes a failed record)."""
    recs = []
    for n in names:
        p = record_path(run_dir, n)
        if p.exists():
            try:
                recs.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                recs.append({"object": n, "status": "failed", "error": f"unreadable record {p}"})
    return recs


__all__ = ["ObjectSource", "PreparedObject", "MethodOutput",
           "Evaluator", "resolve_sources",
           "prepare_object", "score_object", "record_path", "finished", "load_records",
           "gt_cache_path"]
