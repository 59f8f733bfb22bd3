"""Evaluation pipeline (``geolrm-bench eval`` / ``sweep-views``): composition only.

Per object: render the GObjaverse 40 views if needed (CPU task) and sample the ground-truth
points -> reconstruct + render the test views + LPIPS (ONE actor holding the model and the
LPIPS network, GPU or CPU) -> PSNR / SSIM / Chamfer / F-score and the per-object result
file (CPU task). The method adapters (:class:`~geolrm_bench.methods.GeoLRMMethod`,
:class:`~geolrm_bench.methods.PredictionsMethod`, the :class:`~geolrm_bench.methods.Prediction`
bundle) and the scoring maths (:func:`~geolrm_bench.methods.image_scores`,
:func:`~geolrm_bench.methods.geometry_scores`) live in :mod:`geolrm_bench.methods`; they are
re-exported here for older callers. Resumable: ``<run>/objects/<name>.json`` is written atomically when an
object is done (ok or failed); a rerun skips objects whose record says ok and retries the
failed ones. Failures become records with ``status`` / ``error``, never a crash of the run.

Frames and cameras: the model and the predictions live in the normalised object frame (Z-up,
inside [-0.5, 0.5]^3); views come from ``geolrm_bench.gobjaverse.load_views`` (OpenCV c2w in
the files, OpenGL c2w for the model and rasterizer, normalised intrinsics). Geometry is
scored (:func:`geolrm_bench.methods.geometry_scores`) with the object scaled to [-1, 1]^3 for the
headline ``chamfer`` / ``fscore`` (the usual LRM evaluation frame), and beside them in the
ground-truth mesh's own frame in metres (``chamfer_m`` / ``fscore_m``; ``ObjectAsset.unit_m``:
HOPE files are in cm, OmniObject3D in mm; prediction points mapped back with the inverse of
``ObjectAsset.to_normalized``) and in the normalised frame, longest side 1
(``chamfer_unitbox`` / ``fscore_unitbox``).
Method-agnostic mode (``--predictions DIR``) reads, per object,
``DIR/<object>/`` holding a 3DGS ``.ply`` (rendered with our rasterizer), a mesh
(``.obj/.glb/.gltf/.ply/.off/.stl``, rendered with our pyrender renderer) or the test views as
``<NNNNN>.png``; all in the normalised frame; an optional ``cost.json`` with ``inference_s`` /
``memory_gb`` supplies the method's cost.

Layout of a run folder ``<out>`` (default ``reports/<run>``): ``renders/`` (render cache, unless
the dataset root is already renders or ``--renders`` points elsewhere), ``gt/`` (ground-truth
point cache), ``objects/`` (per-object records), the report files of
:mod:`geolrm_bench.reports`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import read_json, save_npy_atomic, sha256_file, write_json_atomic
from geolrm_bench.methods import (  # noqa: F401  (re-exported: the method adapters live in the library)
    GIB,
    MESH_EXTS,
    GeoLRMMethod,
    Prediction,
    PredictionsMethod,
    _fscore_value,
    _is_3dgs_ply,
    _read_png_on_bg,
    _resolve_device,
    geometry_scores,
    image_scores,
    preload_torch_stack,
)
from geolrm_bench.methods import safe_name as _safe
from geolrm_bench.protocol import DEFAULT_TEST_VIEWS, Protocol, input_view_ids, select_objects

#: per-object geometry columns (see geolrm_bench.methods.geometry_scores), headline first
GEOMETRY_COLUMNS = ("chamfer", "fscore", "chamfer_m", "fscore_m", "chamfer_unitbox", "fscore_unitbox")
GEOMETRY_FRAMES = "headline [-1,1]^3; _m metres; _unitbox longest side 1"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    """Everything one evaluation run needs (CLI flags map 1:1 onto these fields)."""

    dataset: str = "sample"  # dataset kind (gso, omni, sample, ...), or a folder of GObjaverse renders
    root: str | None = None  # dataset root; None = geolrm_bench.datasets.default_root(dataset)
    checkpoint: str | None = None  # official .ckpt or a from_pretrained folder
    preset: str | None = None  # model preset with random weights (paper/small/tiny) when no checkpoint
    predictions: str | None = None  # method-agnostic: folder of another method's outputs
    method: str | None = None  # method name in the report (default GeoLRM[-preset] or the folder name)
    num_input_views: int = 6
    input_views: list[int] | None = None  # overrides the evenly-spaced default
    test_views: list[int] | None = None  # default protocol.DEFAULT_TEST_VIEWS
    limit: int | None = 100
    seed: int = 0
    out: str | None = None  # run folder; default reports/<run>
    run: str | None = None  # run name; default eval-<dataset>-<method>-n<N>
    renders: str | None = None  # render cache; default <out>/renders
    gt_cache: str | None = None  # ground-truth point cache; default <out>/gt
    address: str | None = None  # Ray address of an existing cluster; None = local Ray
    num_cpus: int | None = None  # local Ray CPUs (default: all)
    local: bool = False  # run in this process without Ray (debugging, benchmarks)
    device: str = "auto"  # cpu, cuda, auto
    max_tokens: int | None = None  # reconstruction token cap (default: the preset's)
    resolution: int = 512  # render and evaluation resolution (px)
    input_size: int | None = None  # model input size (default: the preset's)
    lpips_net: str = "vgg"
    num_gt_points: int = 16000
    fscore_tau: float = 0.2
    quiet: bool = False

    def protocol(self) -> Protocol:
        return Protocol(num_input_views=self.num_input_views, input_views=list(self.input_views or []),
                        test_views=list(self.test_views or DEFAULT_TEST_VIEWS), resolution=self.resolution,
                        limit=self.limit, seed=self.seed, num_gt_points=self.num_gt_points,
                        fscore_tau=self.fscore_tau)

    def method_name(self) -> str:
        if self.method:
            return self.method
        if self.predictions:
            return Path(self.predictions).resolve().name
        if self.checkpoint:
            return "GeoLRM"
        return f"GeoLRM-{self.preset or 'tiny'}"

    def dataset_name(self) -> str:
        return Path(self.dataset).name if ("/" in self.dataset or os.sep in self.dataset) else self.dataset

    def run_name(self) -> str:
        if self.run:
            return self.run
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.method_name())
        return f"eval-{self.dataset_name()}-{safe}-n{self.protocol().num_input_views}"

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("reports") / self.run_name()


@dataclass
class ObjectSource:
    """One object to evaluate: a dataset ref (rendered into the cache) or an existing render folder."""

    name: str
    ref: Any = None  # geolrm_bench.datasets.ObjectRef (picklable) or None
    render_dir: str | None = None  # existing GObjaverse-format object folder


@dataclass
class RunResult:
    run_dir: Path
    summary: Any  # pandas DataFrame (1 row)
    records: list[dict] = field(default_factory=list)
    skipped: int = 0
    failed: int = 0


# --------------------------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------------------------
def _is_rendered_root(root: Path) -> bool:
    from geolrm_bench import gobjaverse

    if gobjaverse.is_gobjaverse_object(root):
        return True
    try:
        return len(gobjaverse.list_rendered_objects(root)) > 0
    except (BenchError, FileNotFoundError, NotADirectoryError):
        return False


def resolve_sources(cfg: EvalConfig) -> tuple[list[ObjectSource], str]:
    """All objects of the dataset (unselected) and the root used."""
    if cfg.dataset and (Path(cfg.dataset).is_dir() and cfg.root is None):
        root = Path(cfg.dataset)
    else:
        from geolrm_bench import datasets

        root = Path(cfg.root) if cfg.root else datasets.default_root(cfg.dataset)
    if not root.exists():
        raise BenchError(f"dataset root not found (dataset {cfg.dataset!r}; pass --root)", root)
    if _is_rendered_root(root):
        from geolrm_bench import gobjaverse

        if gobjaverse.is_gobjaverse_object(root):
            dirs = [root]
        else:
            dirs = [Path(d) for d in gobjaverse.list_rendered_objects(root)]
        return [ObjectSource(name=_rendered_name(root, d), render_dir=str(d)) for d in dirs], str(root)
    from geolrm_bench import datasets

    kind = cfg.dataset if not Path(cfg.dataset).is_dir() else datasets.detect_dataset(root)
    refs = datasets.list_objects(kind, root)
    if not refs:
        raise BenchError(f"no objects of kind {kind!r} found", root)
    return [ObjectSource(name=r.name, ref=r) for r in refs], str(root)


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
def prepare_object(src: ObjectSource, renders_root: str, gt_root: str, protocol: Protocol) -> dict:
    """Render the object's 40 views into ``renders_root`` (unless present) and cache its
    ground-truth surface points (GT frame, ``[num_gt_points, 3]`` float64) under ``gt_root``.

    Returns a record ``{name, status, error, object_dir, gt_points, render_s, gt_s, warnings}``;
    never raises.
    """
    preload_torch_stack()
    rec: dict[str, Any] = {"name": src.name, "status": "ok", "error": "", "object_dir": None,
                           "gt_points": None, "to_normalized": None, "render_s": 0.0, "gt_s": 0.0,
                           "warnings": []}
    try:
        asset = None
        if src.render_dir is not None:
            rec["object_dir"] = src.render_dir
            asset = _asset_from_render_metadata(Path(src.render_dir), rec["warnings"])
        else:
            object_dir = Path(renders_root) / src.name  # render_object writes <root>/<asset.name>
            if _cached_resolution(object_dir) != protocol.resolution:  # absent, or another resolution
                from geolrm_bench import rendering

                asset = src.ref.load()
                t0 = time.perf_counter()
                object_dir = Path(rendering.render_object(asset, renders_root,
                                                          resolution=protocol.resolution))
                rec["render_s"] = time.perf_counter() - t0
            rec["object_dir"] = str(object_dir)
        gt_path = Path(gt_root) / f"{_safe(src.name)}_n{protocol.num_gt_points}_s{protocol.gt_seed}.npz"
        if gt_path.exists():
            with np.load(gt_path) as z:
                rec["to_normalized"] = z["to_normalized"].tolist()
            rec["gt_points"] = str(gt_path)
        else:
            if asset is None and src.ref is not None:
                asset = src.ref.load()
            if asset is not None:
                from geolrm_bench.metrics import sample_surface_points

                t0 = time.perf_counter()
                pts = np.asarray(sample_surface_points(asset.gt_mesh(), n=protocol.num_gt_points,
                                                       seed=protocol.gt_seed), dtype=np.float64)
                _save_npz_atomic(gt_path, points=pts, to_normalized=np.asarray(asset.to_normalized),
                                 unit_m=np.float64(getattr(asset, "unit_m", 1.0) or 1.0))
                rec["gt_s"] = time.perf_counter() - t0
                rec["gt_points"] = str(gt_path)
                rec["to_normalized"] = np.asarray(asset.to_normalized).tolist()
                rec["warnings"] += list(getattr(asset, "warnings", []) or [])
            else:
                rec["warnings"].append("no ground-truth mesh for this rendered object: "
                                       "geometry metrics skipped")
    except Exception as e:  # a bad object is a record, not a crash
        rec.update(status="failed", error=one_line(e))
    return rec


def _cached_resolution(object_dir: Path) -> int | None:
    """Resolution recorded in a cached render's metadata.json (None: no complete render)."""
    try:
        return int(read_json(object_dir / "metadata.json").get("resolution"))
    except (BenchError, TypeError, ValueError, AttributeError):
        return None


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
        from geolrm_bench import datasets

        parts = source.split("/")
        kind, dataset = parts[-1], (parts[0] if len(parts) > 1 else None)
        name = str(meta.get("object") or object_dir.name)
        return datasets.ObjectRef(name, Path(path), kind, dataset).load()
    except Exception as e:
        warnings.append(f"source mesh named in {meta_path} not loadable ({one_line(e)})")
        return None


def _save_npz_atomic(path: Path, **arrays) -> None:
    import io

    from geolrm_bench.io import write_bytes_atomic

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# stage 2 (the one actor): a geolrm_bench.methods adapter + LPIPS
# --------------------------------------------------------------------------------------------
class Evaluator:
    """The actor body: one method (model) and one LPIPS network, built once."""

    def __init__(self, method_spec: dict, lpips_net: str = "vgg"):
        import torch

        threads = method_spec.pop("threads", None)
        if threads:
            torch.set_num_threads(int(threads))
        if method_spec.get("predictions"):
            self.method = PredictionsMethod(method_spec["predictions"], method_spec.get("device", "auto"))
        else:
            self.method = GeoLRMMethod(method_spec.get("checkpoint"), method_spec.get("preset"),
                                       method_spec.get("device", "auto"), method_spec.get("max_tokens"),
                                       method_spec.get("input_size"), method_spec.get("seed", 0))
        from geolrm_bench.metrics import LPIPS

        self.lpips = LPIPS(net=lpips_net, device=self.method.device)
        self.lpips_device = self.method.device

    def info(self) -> dict:
        import torch

        from geolrm_bench.metrics.cost import cpu_name

        dev = self.method.device
        name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else cpu_name()
        return {"checkpoint_kind": self.method.checkpoint_kind, "preset": self.method.preset,
                "checkpoint_sha256": self.method.checkpoint_sha256, "device": dev, "device_name": name}

    def predict(self, prep: dict, protocol: Protocol) -> dict:
        """Reconstruct + render the test views + LPIPS. Never raises: errors become the record."""
        if prep.get("status") != "ok":
            return {"status": "failed", "error": prep.get("error", "preparation failed")}
        try:
            import torch

            from geolrm_bench import gobjaverse

            t0 = time.perf_counter()
            if isinstance(self.method, PredictionsMethod):
                pred = self.method.predict(prep["object_dir"], protocol, prep["name"])
            else:
                pred = self.method.predict(prep["object_dir"], protocol)
            t1 = time.perf_counter()
            vt = gobjaverse.load_views(prep["object_dir"], views=protocol.test_views,
                                       background=protocol.background, resolution=protocol.resolution)
            gt = vt.images.float().clamp(0, 1)
            p = torch.from_numpy(np.ascontiguousarray(pred.images)).float()
            if p.shape != gt.shape:
                raise BenchError(f"predicted test views have shape {tuple(p.shape)}, "
                                 f"expected {tuple(gt.shape)}")
            with torch.no_grad():
                lp = self.lpips(p, gt)
            lp = np.asarray(torch.as_tensor(lp).detach().float().cpu().reshape(-1))
            return {"status": "ok", "error": "", "images": pred.images, "gt_images": gt.numpy(),
                    "points": pred.points, "inference_s": pred.inference_s, "memory_gb": pred.memory_gb,
                    "num_gaussians": pred.num_gaussians, "device": pred.device or self.method.device,
                    "lpips": lp.tolist(), "reconstruct_s": t1 - t0, "lpips_s": time.perf_counter() - t1,
                    "extra": pred.extra}
        except Exception as e:
            return {"status": "failed", "error": one_line(e), "traceback": traceback.format_exc(limit=4)}


# --------------------------------------------------------------------------------------------
# stage 3 (CPU): image + geometry metrics, the per-object record
# --------------------------------------------------------------------------------------------
def score_object(prep: dict, pred: dict, protocol: Protocol, record_path: str, meta: dict) -> dict:
    """PSNR / SSIM per test view, Chamfer / F-score in the GT frame; writes the record atomically."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"object": prep.get("name"), "status": "ok", "error": "", **meta,
                           "num_input_views": protocol.num_input_views, "views": [],
                           "render_s": prep.get("render_s", 0.0) + prep.get("gt_s", 0.0),
                           "warnings": list(prep.get("warnings", []))}
    try:
        if prep.get("status") != "ok":
            raise BenchError(prep.get("error") or "preparation failed")
        if pred.get("status") != "ok":
            raise BenchError(pred.get("error") or "prediction failed")
        ps, ss = image_scores(pred["images"], pred["gt_images"])
        lp = np.asarray(pred["lpips"], dtype=np.float64).reshape(-1)
        for i, v in enumerate(protocol.test_views):
            rec["views"].append({"view": int(v), "psnr": float(ps[i]), "ssim": float(ss[i]),
                                 "lpips": float(lp[i])})
        rec["psnr"], rec["ssim"], rec["lpips"] = float(ps.mean()), float(ss.mean()), float(lp.mean())
        for k in GEOMETRY_COLUMNS:
            rec[k] = float("nan")
        if pred.get("points") is not None and prep.get("gt_points"):
            with np.load(prep["gt_points"]) as z:
                gt_pts = z["points"]
                to_norm = z["to_normalized"]
                unit_m = float(z["unit_m"]) if "unit_m" in z.files else 1.0
            rec["gt_unit_m"] = unit_m
            rec.update(geometry_scores(pred["points"], gt_pts, to_norm, unit_m, protocol.fscore_tau))
        elif pred.get("points") is None:
            rec["warnings"].append("method gave no geometry: chamfer/fscore not computed")
        rec["inference_s"] = float(pred["inference_s"])
        rec["memory_gb"] = float(pred["memory_gb"])
        rec["num_gaussians"] = int(pred.get("num_gaussians", 0))
        rec["device"] = pred.get("device", "")
        rec["reconstruct_s"] = float(pred.get("reconstruct_s", math.nan))
        rec["memory_method"] = (pred.get("extra") or {}).get("memory_method", "")
        rec["lpips_s"] = float(pred.get("lpips_s", math.nan))
        if (pred.get("extra") or {}).get("warning"):
            rec["warnings"].append(pred["extra"]["warning"])
    except Exception as e:
        rec.update(status="failed", error=one_line(e))
    rec["metrics_s"] = time.perf_counter() - t0 + float(pred.get("lpips_s", 0.0) or 0.0)
    write_json_atomic(record_path, rec)
    return rec


def to_gt_frame(points: np.ndarray, to_normalized: np.ndarray) -> np.ndarray:  # [M,3] -> [M,3]
    """Kept for callers of the old name: :func:`geolrm_bench.datasets.points_to_gt_frame`."""
    from geolrm_bench.datasets import points_to_gt_frame

    return points_to_gt_frame(points, to_normalized)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def record_path(run_dir: Path, name: str) -> Path:
    return run_dir / "objects" / f"{_safe(name)}.json"


def finished(path: Path, key: str | None = None) -> bool:
    """True when the object's record exists, parses, says ok and (when ``key`` is given) was
    made under the same protocol and method (``run_key``); failed or stale ones are redone."""
    try:
        rec = json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return False
    return bool(rec) and rec.get("status") == "ok" and (key is None or rec.get("run_key") == key)


def run_key(cfg: EvalConfig, protocol: Protocol) -> str:
    """A short hash of everything that changes an object's numbers (protocol + method)."""
    import hashlib

    spec = {k: v for k, v in method_spec(cfg).items() if k != "device"}
    spec["checkpoint_files"] = _checkpoint_fingerprint(cfg.checkpoint)  # a replaced file is redone
    proto = {k: v for k, v in protocol.to_dict().items() if k != "limit"}  # a larger subset reuses
    blob = json.dumps({"protocol": proto, "method": spec, "lpips": cfg.lpips_net,
                       "geometry": GEOMETRY_FRAMES},  # records of the older metre headline are redone
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _checkpoint_fingerprint(checkpoint: str | None) -> list:
    """``[name, size, mtime_ns]`` of the checkpoint file (or of every file in a checkpoint folder):
    cheap, and it changes when the weights at the same path are replaced."""
    if not checkpoint:
        return []
    p = Path(checkpoint)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def method_spec(cfg: EvalConfig) -> dict:
    return {"checkpoint": cfg.checkpoint, "preset": cfg.preset, "predictions": cfg.predictions,
            "device": cfg.device, "max_tokens": cfg.max_tokens, "input_size": cfg.input_size,
            "seed": cfg.seed}


def run_eval(cfg: EvalConfig, evaluator: Evaluator | None = None,
             log: Callable[[str], None] | None = None) -> RunResult:
    """Run (or resume) one evaluation and write its report. ``evaluator`` reuses a built
    model in local mode (the sweep and benchmark pass one)."""
    from tqdm import tqdm


    log = log or (lambda s: None if cfg.quiet else print(s, flush=True))
    preload_torch_stack()
    if cfg.predictions is None and not cfg.checkpoint and not cfg.preset:
        raise BenchError("give --checkpoint CKPT, --preset NAME or --predictions DIR")
    if cfg.predictions and (cfg.checkpoint or cfg.preset):
        raise BenchError("--predictions evaluates another method's outputs: do not combine with "
                         "--checkpoint/--preset")
    protocol = cfg.protocol()
    run_dir = cfg.run_dir()
    check_outputs(cfg, run_dir)  # before any work: a bad --out / --renders is one line, exit 2
    sources, root = resolve_sources(cfg)
    chosen = set(select_objects([s.name for s in sources], cfg.limit, cfg.seed))
    sources = [s for s in sources if s.name in chosen]
    renders_root = Path(cfg.renders) if cfg.renders else run_dir / "renders"
    gt_root = Path(cfg.gt_cache) if cfg.gt_cache else run_dir / "gt"
    for d in (run_dir / "objects", gt_root):
        d.mkdir(parents=True, exist_ok=True)
    key = run_key(cfg, protocol)
    todo = [s for s in sources if not finished(record_path(run_dir, s.name), key)]
    log(f"eval {cfg.run_name()}: {len(sources)} objects ({len(sources) - len(todo)} already done), "
        f"input views {protocol.input_views}, test views {protocol.test_views} -> {run_dir}")
    meta = {"method": cfg.method_name(), "dataset": cfg.dataset_name(), "run_key": key}
    spec = method_spec(cfg)
    info: dict = {}
    bar = tqdm(total=len(todo), desc="eval", unit="obj", disable=cfg.quiet or not todo)
    nfail = 0

    def _done(rec: dict) -> None:
        nonlocal nfail
        nfail += rec["status"] != "ok"
        bar.update(1)
        bar.set_postfix(failed=nfail)
        if rec["status"] != "ok":
            tqdm.write(f"  {rec['object']}: failed: {rec['error']}")

    if todo and (cfg.local or evaluator is not None):
        ev = evaluator or Evaluator(dict(spec), cfg.lpips_net)
        info = ev.info()
        for s in todo:
            prep = prepare_object(s, str(renders_root), str(gt_root), protocol)
            pred = ev.predict(prep, protocol)
            _done(score_object(prep, pred, protocol, str(record_path(run_dir, s.name)), meta))
    elif todo:
        if cfg.checkpoint:  # a bad checkpoint is one line naming the file, not a dead actor
            from geolrm_bench.model.checkpoint import validate_checkpoint  # heavy (torch): only here

            validate_checkpoint(cfg.checkpoint)
        info = _run_ray(cfg, spec, todo, protocol, renders_root, gt_root, run_dir, meta, _done)
    bar.close()
    if not info:
        info = _previous_info(run_dir) or _describe_without_model(cfg)
    return write_run_report(cfg, protocol, run_dir, [s.name for s in sources], info, root)


def check_outputs(cfg: EvalConfig, run_dir: Path) -> None:
    """The run folder (created and marked as the toolkit's), the render and ground-truth caches:
    each a folder or absent, never a file; a non-empty folder of someone else's is refused
    (:func:`geolrm_bench.io.ensure_output_root`). Also checks ``--predictions`` exists."""
    from geolrm_bench.io import ensure_output_root

    if cfg.predictions and not Path(cfg.predictions).is_dir():
        raise BenchError("predictions folder not found", cfg.predictions)
    ensure_output_root(run_dir, markers=RUN_MARKERS, kind="eval")
    for d in (cfg.renders, cfg.gt_cache):
        if d is not None and Path(d).exists() and not Path(d).is_dir():
            raise BenchError("exists and is a file, not a folder", d)


#: files / folders that identify an eval or sweep run folder written by older versions
RUN_MARKERS = ("config.json", "objects", "renders", "gt")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def actor_error_reason(e: BaseException) -> str:
    """The one-line reason inside a Ray actor-start error (its text holds the remote traceback,
    ANSI-coloured): the last ``SomethingError: message`` line, else :func:`one_line` of it."""
    cause = e.__cause__
    if isinstance(cause, BenchError):
        return str(cause)
    text = _ANSI.sub("", str(e))
    hits = re.findall(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", text, flags=re.M)
    hits = [h for h in hits if h[0] not in ("RayActorError", "ActorDiedError", "RayTaskError")]
    if hits:
        kind, msg = hits[-1]
        return msg.strip() if kind == "BenchError" else f"{kind}: {msg.strip()}"
    return one_line(cause or e)


def _init_ray(cfg: EvalConfig) -> bool:
    """Connect to ``cfg.address`` or start a local Ray; False when Ray was already up."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if cfg.address:
        ray.init(address=cfg.address, **kw)
    else:
        ray.init(num_cpus=cfg.num_cpus or os.cpu_count() or 1, **kw)
    return True


def _run_ray(cfg, spec, todo, protocol, renders_root, gt_root, run_dir, meta, on_done) -> dict:
    import ray

    started = _init_ray(cfg)
    try:
        # "auto": a GPU when the cluster has one (the actor resolves the device on its own node)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        use_gpu = cfg.device.startswith("cuda") or (cfg.device in ("", "auto") and gpus >= 1)
        if use_gpu and gpus < 1:
            raise BenchError("--device cuda requested but the Ray cluster has no GPU")
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        actor_cpus = 1
        actor_threads = max(1, total_cpus - 1) if not use_gpu else 1
        actor_cls = ray.remote(num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0, max_restarts=1)(Evaluator)
        spec = dict(spec, threads=actor_threads)
        actor = actor_cls.remote(spec, cfg.lpips_net)
        try:
            info = ray.get(actor.info.remote())
        except ray.exceptions.RayActorError as e:
            raise BenchError(f"the model actor failed to start: {actor_error_reason(e)}") from None
        prep_task = ray.remote(num_cpus=1, max_retries=2)(prepare_object)
        score_task = ray.remote(num_cpus=1, max_retries=2)(score_object)
        pending = []
        for s in todo:
            prep = prep_task.remote(s, str(renders_root), str(gt_root), protocol)
            pred = actor.predict.remote(prep, protocol)
            pending.append(score_task.remote(prep, pred, protocol, str(record_path(run_dir, s.name)), meta))
        by_ref = dict(zip(pending, todo))
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                try:
                    rec = ray.get(r)
                except Exception as e:  # crashed worker / actor after retries: record it
                    name = by_ref[r].name
                    rec = {"object": name, "status": "failed", "error": one_line(e), **meta,
                           "num_input_views": protocol.num_input_views, "views": []}
                    write_json_atomic(record_path(run_dir, name), rec)
                on_done(rec)
        ray.kill(actor)
        return info
    finally:
        if started:
            ray.shutdown()


def _previous_info(run_dir: Path) -> dict:
    p = run_dir / "config.json"
    if p.exists():
        try:
            c = read_json(p)
            return {k: c.get(k) for k in ("checkpoint_kind", "preset", "checkpoint_sha256", "device",
                                          "device_name")}
        except BenchError:
            return {}
    return {}


def _describe_without_model(cfg: EvalConfig) -> dict:
    if cfg.predictions:
        kind, preset, sha = "external", "", ""
    elif cfg.checkpoint:
        p = Path(cfg.checkpoint)
        kind = "pretrained" if p.is_dir() else "official"
        preset, sha = "", (sha256_file(p) if p.is_file() else "")
    else:
        kind, preset, sha = "random", cfg.preset or "tiny", ""
    return {"checkpoint_kind": kind, "preset": preset, "checkpoint_sha256": sha,
            "device": cfg.device, "device_name": ""}


def load_records(run_dir: Path, names: list[str]) -> list[dict]:
    recs = []
    for n in names:
        p = record_path(run_dir, n)
        if p.exists():
            try:
                recs.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                recs.append({"object": n, "status": "failed", "error": f"unreadable record {p}"})
    return recs


PER_OBJECT_COLUMNS = ["object", "status", "error", "method", "dataset", "num_input_views", "psnr", "ssim",
                      "lpips", "chamfer", "fscore", "inference_s", "memory_gb", "chamfer_m", "fscore_m",
                      "chamfer_unitbox", "fscore_unitbox",
                      "num_gaussians", "render_s", "reconstruct_s", "metrics_s", "lpips_s", "memory_method",
                      "device", "warnings"]


def tables(records: list[dict]):
    """(per_view, per_object) DataFrames from per-object records."""
    import pandas as pd

    rows, views = [], []
    for r in records:
        row = {c: r.get(c, np.nan) for c in PER_OBJECT_COLUMNS}
        row["warnings"] = "; ".join(r.get("warnings") or [])
        rows.append(row)
        for v in r.get("views") or []:
            views.append({"object": r.get("object"), "method": r.get("method"), "dataset": r.get("dataset"),
                          "num_input_views": r.get("num_input_views"), **v})
    per_object = pd.DataFrame(rows, columns=PER_OBJECT_COLUMNS)
    per_view = pd.DataFrame(views, columns=["object", "method", "dataset", "num_input_views", "view", "psnr",
                                            "ssim", "lpips"])
    return per_view, per_object


def write_run_report(cfg: EvalConfig, protocol: Protocol, run_dir: Path, names: list[str], info: dict,
                     root: str) -> RunResult:
    from geolrm_bench import reports

    records = load_records(run_dir, names)
    per_view, per_object = tables(records)
    device = info.get("device_name") or info.get("device") or ""
    summary = reports.summarize(per_object, cfg.method_name(), cfg.dataset_name(), protocol.num_input_views,
                                checkpoint_kind=info.get("checkpoint_kind") or "unknown", device=device,
                                preset=info.get("preset") or None)
    warnings = []
    if len(records) < len(names):
        warnings.append(f"{len(names) - len(records)} selected objects have no record yet")
    nfail = int((per_object["status"] != "ok").sum()) if len(per_object) else 0
    if nfail:
        warnings.append(f"{nfail} objects failed (see per_object.csv status/error)")
    methods = [m for m in per_object.get("memory_method", []) if isinstance(m, str) and m]
    config = reports.provenance(memory_method=methods[0] if methods else "",
        run=cfg.run_name(), method=cfg.method_name(), dataset=cfg.dataset_name(), root=root,
        checkpoint=cfg.checkpoint, preset=info.get("preset") or cfg.preset, predictions=cfg.predictions,
        checkpoint_kind=info.get("checkpoint_kind"), checkpoint_sha256=info.get("checkpoint_sha256"),
        not_paper_model=bool(summary["not_paper_model"].iloc[0]), device=info.get("device"),
        device_name=info.get("device_name"), max_tokens=cfg.max_tokens, input_size=cfg.input_size,
        lpips_net=cfg.lpips_net, objects=names, protocol=protocol.to_dict(),
        input_views=protocol.input_views, test_views=protocol.test_views, eval_config=asdict(cfg))
    reports.write_report(run_dir, per_view, per_object, summary, config, protocol.describe(cfg.lpips_net),
                         cfg.dataset_name(), warnings)
    return RunResult(run_dir=run_dir, summary=summary, records=records, failed=nfail)


def run_sweep(cfg: EvalConfig, views: tuple[int, ...] = (4, 8, 12, 16, 20),
              log: Callable[[str], None] | None = None):
    """Table 3: the same evaluation over several N, sharing renders and ground-truth points.

    Layout: ``<sweep>/renders``, ``<sweep>/gt``, ``<sweep>/n<N>/`` (each a full eval run), and
    ``<sweep>/summary.csv`` / ``summary.md`` / the three plots.
    """
    import pandas as pd

    from geolrm_bench import reports

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.method_name())
    sweep_name = cfg.run or f"sweep-{cfg.dataset_name()}-{safe}"
    sweep_dir = Path(cfg.out) if cfg.out else Path("reports") / sweep_name
    from geolrm_bench.io import ensure_output_root

    ensure_output_root(sweep_dir, markers=RUN_MARKERS, kind="sweep")  # before any work
    renders = cfg.renders or str(sweep_dir / "renders")
    gt = cfg.gt_cache or str(sweep_dir / "gt")
    evaluator = None
    started_ray = False
    preload_torch_stack()
    if cfg.local:
        evaluator = Evaluator(method_spec(cfg), cfg.lpips_net)
    else:  # one Ray session for all N (each N still builds its own model actor)
        started_ray = _init_ray(cfg)
    results = []
    try:
        for n in views:
            sub = EvalConfig(**{**asdict(cfg), "num_input_views": int(n), "input_views": None,
                                "out": str(sweep_dir / f"n{n}"), "run": f"{sweep_name}-n{n}",
                                "renders": renders, "gt_cache": gt})
            results.append(run_eval(sub, evaluator=evaluator, log=log))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    summary = pd.concat([r.summary for r in results], ignore_index=True)
    paper, note = reports.paper_rows(cfg.dataset_name())
    paper = paper[paper["num_input_views"].isin(list(views))]
    reports.write_csv_atomic(summary, sweep_dir / "summary.csv")
    reports.plot_sweep(summary, sweep_dir, paper[paper["table"] == 3] if len(paper) else paper)
    base = read_json(results[0].run_dir / "config.json")
    proto_lines = cfg.protocol().describe(cfg.lpips_net)
    proto_lines[1] = "Input views per N (floor(i*24/N + 0.5) among orbit views 0-23): " + "; ".join(
        f"N={n}: {', '.join(map(str, input_view_ids(n)))}" for n in views) + "."
    md = reports.summary_markdown(summary, proto_lines, {**base, "run": sweep_name},
                                  paper[paper["table"] == 3] if len(paper) else paper, note)
    from geolrm_bench.io import write_text_atomic

    write_text_atomic(sweep_dir / "summary.md", md)
    write_json_atomic(sweep_dir / "config.json", {**base, "run": sweep_name, "views": list(views),
                                                   "runs": [str(r.run_dir) for r in results]})
    return sweep_dir, summary, results


def save_points(path: str | Path, points: np.ndarray) -> Path:
    """Helper for callers that want the prediction points on disk (``[M, 3]`` float32)."""
    return save_npy_atomic(path, np.asarray(points, np.float32))
