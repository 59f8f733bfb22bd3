"""Method adapters: turn one rendered object into test-view images and prediction points.

The interface is :class:`Method` (a small base class, like gsplat's ``Strategy``): a method
has a ``device``, describes its weights (``checkpoint_kind``, ``preset``,
``checkpoint_sha256``) and implements ONE call, ``predict(object_dir, protocol, name) ->``
:class:`Prediction`. Implementations:

- :class:`GeoLRMMethod`: the bundled GeoLRM (official ``.ckpt``, one of our
  ``from_pretrained`` folders, or a preset with random weights) reconstructs 3D Gaussians from
  the protocol's input views and rasterizes them at the test views. ``geolrm-bench
  reconstruct`` uses the same adapter (:meth:`GeoLRMMethod.reconstruct`).
- :class:`NearestViewMethod`: the nearest-input-view baseline (each test view predicted by the
  input view whose camera direction from the object centre is closest; no geometry).
- :class:`PredictionsMethod`: method-agnostic; another method's outputs on disk, per object
  ``root/<object>/`` holding a 3DGS ``.ply`` (rasterized with :mod:`geolrm_bench.model.rasterize`), a mesh
  (``.obj/.glb/.gltf/.ply/.off/.stl``, rendered with :func:`geolrm_bench.rendering.render_views`)
  or the test views as ``<NNNNN>.png`` (no geometry then); an optional ``cost.json`` with
  ``inference_s`` / ``memory_gb`` / ``device`` supplies the method's cost.

Trained checkpoints and simple baselines are further subclasses. :func:`build_method` makes
one from a :class:`MethodSpec` (what the evaluation's model actor receives).

Frames and cameras: every prediction (Gaussians, mesh, points) is in the **normalised object
frame** (Z-up, object inside [-0.5, 0.5]^3, see :mod:`geolrm_bench.datasets`). Views come from
:func:`geolrm_bench.gobjaverse.load_views`: the files hold OpenCV camera-to-world matrices
(x right, y down, z forward); the model and the Gaussian rasterizer take the **OpenGL**
camera-to-world (``ViewBatch.c2w_opengl``: x right, y up, looking down -z) and normalised
intrinsics (``fx/W, fy/H, cx/W = cy/H = 0.5``). Images are ``[T, 3, H, W]`` float32 in [0, 1],
alpha-composited on the protocol's background (white), at ``protocol.resolution`` px.

Heavy libraries (torch, the model, trimesh, pyrender, PIL) are imported lazily, so importing this
module is cheap (Ray workers import it to unpickle tasks).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import read_json, sha256_file
from geolrm_bench.model import weights as bundled_weights
from geolrm_bench.protocol import Protocol

MESH_EXTS = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
GIB = float(1 << 30)


class CheckpointKind(StrEnum):
    """Where a method's weights come from (written into reports as the plain string)."""

    OFFICIAL = "official"  # the official GeoLRM .ckpt
    PRETRAINED = "pretrained"  # a GeoLRM.save_pretrained folder (config.json + model.safetensors)
    BUNDLED = "bundled"  # the toolkit's own trained model (geolrm_bench.model.weights.BUNDLED)
    RANDOM = "random"  # a preset with random weights: pipeline checks only
    EXTERNAL = "external"  # another method's outputs (--predictions)
    BASELINE = "baseline"  # a reference method without weights (e.g. the nearest input view)

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> CheckpointKind:
        """``bundled`` for the bundled model's folder, ``pretrained`` for another folder,
        ``official`` for a file."""
        if bundled_weights.is_bundled(path):
            return cls.BUNDLED
        return cls.PRETRAINED if Path(path).is_dir() else cls.OFFICIAL


def resolve_model_source(checkpoint: str | None, preset: str | None,
                         predictions: str | None = None) -> tuple[str | None, str | None]:
    """The one default-model rule of ``eval``, ``sweep-views`` and ``reconstruct``.

    ``--checkpoint`` wins, then ``--preset`` (random weights), then ``--predictions`` (another
    method: no model); with none of them the bundled model
    (:data:`geolrm_bench.model.weights.BUNDLED`, read at call time) is used. Returns
    ``(checkpoint, preset)``. A missing bundled folder is a one-line BenchError saying how to
    get a model; there is no silent fallback to random weights.
    """
    if checkpoint or preset or predictions:
        return checkpoint, preset
    return str(bundled_weights.check(bundled_weights.BUNDLED)), None


def safe_name(name: str) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9_.+-]`` replaced by ``_``
    (file names of per-object records, caches and prediction folders)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def resolve_device(device: str | None) -> str:
    """``auto``/empty -> ``cuda`` when available else ``cpu``; ``cuda*`` without CUDA, or anything
    but cpu/cuda, is a BenchError."""
    import torch  # heavy: only when a method is built

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


# --------------------------------------------------------------------------------------------
# the prediction bundle and the interface
# --------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """What a method produced for one object.

    images: [T, 3, H, W] float32 in [0, 1] at the protocol's test views (in that order), on the
        protocol's background (white).
    points: [M, 3] float64 prediction surface points in the normalised object frame, or None
        when the method gave no geometry (test-view PNGs only).
    inference_s: seconds of the reconstruction alone (NaN: unknown).
    memory_gb: its peak memory in GiB (NaN: unknown).
    num_gaussians: number of 3D Gaussians (0 for meshes / images).
    device: the device's name (``cost.device_name``) or the one ``cost.json`` gives.
    extra: free-form details (``source`` file, ``memory_method``, a ``warning``).
    """

    images: np.ndarray  # [T, 3, H, W] float32 in [0, 1] at the test views, white background
    points: np.ndarray | None  # [M, 3] prediction points, normalised frame (None: no geometry)
    inference_s: float = float("nan")  # reconstruction alone
    memory_gb: float = float("nan")  # its peak memory (GiB)
    num_gaussians: int = 0
    device: str = ""
    extra: dict = field(default_factory=dict)


class Method:
    """A method under evaluation. Subclasses set the attributes and implement :meth:`predict`.

    Attributes:
        device: ``cpu`` or ``cuda[:i]``, resolved (never ``auto``).
        checkpoint_kind: where the weights come from (:class:`CheckpointKind`).
        preset: the model preset name ("" when not a GeoLRM preset).
        checkpoint_sha256: SHA-256 of the weights file ("" when none); may be computed lazily.
    """

    device: str = "cpu"
    checkpoint_kind: CheckpointKind = CheckpointKind.EXTERNAL
    preset: str = ""
    checkpoint_sha256: str = ""
    description: str = ""  # one sentence for the report's first line ("" : none)

    def predict(self, object_dir: str | Path, protocol: Protocol, name: str) -> Prediction:
        """Test views (``protocol.test_views`` at ``protocol.resolution`` px, cameras from the
        GObjaverse folder ``object_dir``) and surface points of object ``name``. A bad object
        raises (BenchError preferred); the caller turns it into a failed record."""
        raise NotImplementedError


@dataclass(frozen=True)
class MethodSpec:
    """What builds a method (picklable: sent to the evaluation's model actor).

    ``predictions`` selects :class:`PredictionsMethod`; ``baseline`` a reference method by
    name (:data:`BASELINES`: ``nearest-view``); otherwise :class:`GeoLRMMethod` from
    ``checkpoint`` or ``preset``. ``threads`` (torch CPU threads) is set by the scheduler.
    """

    checkpoint: str | None = None
    preset: str | None = None
    predictions: str | None = None
    baseline: str | None = None
    device: str = "auto"
    max_tokens: int | None = None
    input_size: int | None = None
    seed: int = 0
    threads: int | None = None

    def identity(self) -> dict[str, Any]:
        """The fields that change an object's numbers (the resume key): all but device/threads."""
        ident = {"checkpoint": self.checkpoint, "preset": self.preset, "predictions": self.predictions,
                 "max_tokens": self.max_tokens, "input_size": self.input_size, "seed": self.seed}
        if self.baseline:  # only when set: the keys of existing runs stay as they were
            ident["baseline"] = self.baseline
        return ident


def build_method(spec: MethodSpec) -> Method:
    """The :class:`Method` a spec describes (sets torch's CPU threads first when ``spec.threads``)."""
    if spec.threads:
        import torch  # heavy: only in the process that runs the method

        torch.set_num_threads(int(spec.threads))
    if spec.baseline:
        if spec.baseline not in BASELINES:
            raise BenchError(f"unknown baseline {spec.baseline!r}; choose one of {', '.join(BASELINES)}")
        return BASELINES[spec.baseline](spec.device)
    if spec.predictions:
        return PredictionsMethod(spec.predictions, spec.device)
    return GeoLRMMethod(spec.checkpoint, spec.preset, spec.device, spec.max_tokens, spec.input_size,
                        spec.seed)


# --------------------------------------------------------------------------------------------
# GeoLRM
# --------------------------------------------------------------------------------------------
def load_geolrm(checkpoint: str | None, preset: str | None, seed: int = 0):
    """GeoLRM (eval mode, CPU) from an official ``.ckpt``, a ``save_pretrained`` folder, or a
    preset with random weights (``torch.manual_seed(seed)`` before building; default ``tiny``).

    Returns ``(model, CheckpointKind)``; a missing checkpoint is a BenchError naming it.
    """
    import torch  # heavy: only when a model is built

    from geolrm_bench.model.geolrm import GeoLRM  # torch + the network: only when a model is built

    if checkpoint:
        path = Path(checkpoint)
        if not path.exists():
            raise BenchError("checkpoint not found", path)
        kind = CheckpointKind.of_checkpoint(path)
        pretrained = kind in (CheckpointKind.PRETRAINED, CheckpointKind.BUNDLED)
        model = GeoLRM.from_pretrained(path) if pretrained else GeoLRM.load_official(path)
        return model.eval(), kind
    from geolrm_bench.model.config import get_config  # (beside GeoLRM above)

    torch.manual_seed(seed)
    return GeoLRM(get_config(preset or "tiny")).eval(), CheckpointKind.RANDOM


@dataclass
class Reconstruction:
    """One object's reconstruction (CPU tensors): Gaussians, the proposal's occupancy, tokens, cost."""

    gaussians: Any  # geolrm_bench.model.gaussians.Gaussians, unbatched [N]
    logits: Any  # [R, R, R] occupancy logits (> 0 = occupied), before the token cap
    num_tokens: int
    num_token_slots: int
    cost: Any  # geolrm_bench.metrics.cost.CostResult of proposal + tokens + reconstruction


class GeoLRMMethod(Method):
    """GeoLRM from an official checkpoint, one of our saved folders, or a preset (random weights).

    Args:
        checkpoint: an official ``.ckpt`` file or a ``GeoLRM.from_pretrained`` folder; None for
            a preset with random weights (``torch.manual_seed(seed)`` before building).
        preset: model preset name when no checkpoint (default ``tiny``).
        device: ``cpu``, ``cuda[:i]`` or ``auto``.
        max_tokens: reconstruction token cap (None: the preset's).
        input_size: model input image size in px (None: the preset's).
        seed: seeds the random weights and the reconstruction's generator (CPU).
    """

    def __init__(self, checkpoint: str | None, preset: str | None, device: str = "auto",
                 max_tokens: int | None = None, input_size: int | None = None, seed: int = 0):
        self.device = resolve_device(device)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.seed = seed
        self.checkpoint = checkpoint
        model, self.checkpoint_kind = load_geolrm(checkpoint, preset, seed)
        self.preset = getattr(model.cfg, "name", "") if checkpoint else (preset or "tiny")
        if self.checkpoint_kind is CheckpointKind.BUNDLED:
            self.description = bundled_weights.describe(checkpoint)
        if input_size is not None:
            model.cfg.input_size = int(input_size)
        self.model = model.to(self.device)

    @cached_property
    def checkpoint_sha256(self) -> str:  # type: ignore[override]
        """SHA-256 of the weights (the ``.ckpt``, or a folder's first ``.safetensors``); "" for random."""
        if not self.checkpoint:
            return ""
        path = Path(self.checkpoint)
        weights = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        return sha256_file(weights[0]) if weights else ""

    def reconstruct(self, views) -> Reconstruction:
        """Gaussians from the views of a :class:`geolrm_bench.gobjaverse.ViewBatch` (inputs at
        their stored size; OpenGL c2w + normalised intrinsics): proposal -> token selection
        (cap ``max_tokens``, generator seeded with ``seed``) -> reconstruction, timed and
        memory-measured together (:func:`geolrm_bench.metrics.measure_cost`)."""
        import torch  # heavy: only when a model runs

        from geolrm_bench.metrics import measure_cost  # torch: only in the process running the method

        dev = self.device
        images = views.images[None].to(dev)  # [1, V, 3, H, W]
        c2w = views.c2w_opengl[None].to(dev)  # [1, V, 4, 4] OpenGL
        K = views.intrinsics[None].to(dev)  # [1, V, 3, 3] normalised
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        with torch.no_grad(), measure_cost(device=dev) as cost:
            logits = self.model.propose(images, c2w, K)  # [1, R, R, R]
            anchors = self.model.anchors_from_occupancy(logits, self.max_tokens, gen)
            g = self.model.reconstruct(images, c2w, K, anchors=anchors)
        return Reconstruction(gaussians=g[0].to("cpu"), logits=logits[0].cpu(), cost=cost,
                              num_tokens=int(anchors.mask[0].sum()),
                              num_token_slots=int(anchors.mask.shape[1]))

    def predict(self, object_dir: str | Path, protocol: Protocol, name: str = "") -> Prediction:
        """Reconstruct from ``protocol.input_views`` of the GObjaverse folder ``object_dir``, then
        rasterize the Gaussians at ``protocol.test_views`` at ``protocol.resolution`` px.

        Time and peak memory cover the reconstruction alone. Points: ``protocol.num_gt_points``
        sampled from the Gaussians (normalised frame, seed ``protocol.gt_seed``); None with a
        warning in ``extra`` when there are none (e.g. every Gaussian below the opacity threshold).
        """
        import torch  # heavy: only when a model runs

        from geolrm_bench import gobjaverse  # torch (ViewBatch): only when predicting
        from geolrm_bench.metrics import prediction_points  # torch/trimesh: only when predicting
        from geolrm_bench.model.rasterize import render_gaussians  # torch: only when predicting

        t0 = time.perf_counter()
        vin = gobjaverse.load_views(object_dir, views=protocol.input_views, background=protocol.background)
        c2w_t, K_t, _ = gobjaverse.load_cameras(object_dir, protocol.test_views)  # OpenGL, normalised K
        load_s = time.perf_counter() - t0
        rec = self.reconstruct(vin)
        dev, H = self.device, protocol.resolution
        t1 = time.perf_counter()
        with torch.no_grad():
            out = render_gaussians(rec.gaussians.to(dev), torch.from_numpy(c2w_t).to(dev),
                                   torch.from_numpy(K_t).to(dev), H, H, background=protocol.background)
        rgb = out["rgb"].clamp(0, 1).float().cpu().numpy()
        raster_s = time.perf_counter() - t1
        try:
            pts = np.asarray(prediction_points(rec.gaussians, method="gaussians", n=protocol.num_gt_points,
                                               seed=protocol.gt_seed), dtype=np.float64)
        except ValueError as e:  # e.g. every Gaussian below the opacity threshold
            pts = None
            extra = {"warning": f"no prediction points: {one_line(e)}"}
        else:
            extra = {}
        extra.update(memory_method=rec.cost.memory_method, load_s=load_s, raster_s=raster_s)
        return Prediction(images=rgb, points=pts, inference_s=float(rec.cost.seconds),
                          memory_gb=float(rec.cost.peak_memory_bytes) / GIB, num_gaussians=len(rec.gaussians),
                          device=str(rec.cost.device_name), extra=extra)


# --------------------------------------------------------------------------------------------
# another method's outputs on disk
# --------------------------------------------------------------------------------------------
class PredictionsMethod(Method):
    """Another method's outputs under ``root/<object>/`` (3DGS .ply, a mesh, or test-view PNGs).

    Per object folder, the first of these that exists is used: a 3DGS ``.ply`` (a PLY whose
    header has an ``opacity`` property; loaded with ``geolrm_bench.model.ply.load_ply``), else a mesh file
    (:data:`MESH_EXTS`), else ``<NNNNN>.png`` for every test view (RGBA composited on the
    background, box-resized to the protocol's resolution). All in the normalised object frame.
    """

    checkpoint_kind = CheckpointKind.EXTERNAL

    def __init__(self, root: str, device: str = "auto"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BenchError("predictions folder not found", self.root)
        self.device = resolve_device(device)

    def object_folder(self, name: str) -> Path:
        """``root/<name>``, ``root/<safe name>`` or ``root/<last part of a '__'-joined name>``."""
        for cand in (self.root / name, self.root / safe_name(name), self.root / name.split("__")[-1]):
            if cand.is_dir():
                return cand
        raise BenchError(f"no predictions for object {name!r}", self.root / name)

    def predict(self, object_dir: str | Path, protocol: Protocol, name: str) -> Prediction:
        """The test views (cameras from the GObjaverse folder ``object_dir``) and points of object
        ``name``; BenchError when its folder has no usable output."""
        import torch  # heavy: only when predictions are rendered

        from geolrm_bench import gobjaverse  # torch (ViewBatch): only when predicting

        folder = self.object_folder(name)
        H = W = protocol.resolution
        cost = {}
        if (folder / "cost.json").exists():
            cost = read_json(folder / "cost.json")
        kw = {"inference_s": float(cost.get("inference_s", math.nan)),
              "memory_gb": float(cost.get("memory_gb", math.nan)), "device": str(cost.get("device", ""))}
        pngs = {v: folder / f"{v:05d}.png" for v in protocol.test_views}
        plys = sorted(p for p in folder.glob("*.ply") if _is_3dgs_ply(p))
        meshes = sorted(p for p in folder.iterdir() if p.suffix.lower() in MESH_EXTS and p not in plys)
        vt = gobjaverse.load_views(object_dir, views=protocol.test_views, background=protocol.background,
                                   resolution=protocol.resolution)
        if plys:
            from geolrm_bench.metrics import prediction_points  # torch/trimesh: only when predicting
            from geolrm_bench.model.ply import load_ply  # torch: only for .ply predictions
            from geolrm_bench.model.rasterize import render_gaussians  # torch: only when predicting

            g = load_ply(plys[0]).to(self.device)
            with torch.no_grad():
                out = render_gaussians(g, vt.c2w_opengl.to(self.device), vt.intrinsics.to(self.device), H, W,
                                       background=protocol.background)
            pts = np.asarray(prediction_points(g.to("cpu"), method="gaussians", n=protocol.num_gt_points,
                                               seed=protocol.gt_seed), dtype=np.float64)
            return Prediction(images=out["rgb"].clamp(0, 1).float().cpu().numpy(), points=pts,
                              num_gaussians=len(g), extra={"source": plys[0].name}, **kw)
        if meshes:
            from geolrm_bench import rendering  # pyrender/OpenGL: only for mesh predictions
            from geolrm_bench.metrics import prediction_points  # torch/trimesh: only when predicting

            mesh = load_prediction_mesh(meshes[0])
            layers = rendering.render_views(mesh, resolution=H, views=list(protocol.test_views))
            rgba = layers["rgba"].astype(np.float32) / 255.0  # [T, H, W, 4]
            bg = np.asarray(protocol.background, np.float32)
            rgb = rgba[..., :3] * rgba[..., 3:] + bg * (1 - rgba[..., 3:])
            pts = np.asarray(prediction_points(mesh, method="mesh", n=protocol.num_gt_points,
                                               seed=protocol.gt_seed), dtype=np.float64)
            return Prediction(images=rgb.transpose(0, 3, 1, 2).copy(), points=pts,
                              extra={"source": meshes[0].name}, **kw)
        if all(p.exists() for p in pngs.values()):
            imgs = np.stack([_read_png_on_bg(p, protocol.background, H) for p in pngs.values()])
            return Prediction(images=imgs, points=None, extra={"source": "png"}, **kw)
        missing = [p.name for p in pngs.values() if not p.exists()]
        raise BenchError(f"no 3DGS .ply, mesh, or test-view PNGs (missing {', '.join(missing)})", folder)


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
def nearest_view_indices(test_positions: np.ndarray, input_positions: np.ndarray,
                         centre: np.ndarray | None = None) -> np.ndarray:
    """For each test camera, the index of the input camera whose direction from ``centre``
    (default the origin, the normalised object's centre) is closest: largest cosine of the
    angle between the unit vectors; ties go to the lower index.

    Args:
        test_positions: [T, 3] camera centres (world; the c2w translation, any axes convention).
        input_positions: [N, 3] camera centres.
        centre: [3] the point the directions are taken from.
    Returns:
        [T] int64 indices into ``input_positions``.
    """
    c = np.zeros(3) if centre is None else np.asarray(centre, np.float64).reshape(3)
    t = np.asarray(test_positions, np.float64).reshape(-1, 3) - c
    i = np.asarray(input_positions, np.float64).reshape(-1, 3) - c
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    i = i / np.maximum(np.linalg.norm(i, axis=1, keepdims=True), 1e-12)
    return np.argmax(t @ i.T, axis=1).astype(np.int64)


class NearestViewMethod(Method):
    """The nearest-input-view baseline: each test view is predicted by the input view (at the
    protocol's resolution, on its background) whose camera direction from the object centre
    (the origin of the normalised frame) is closest (:func:`nearest_view_indices`). It knows
    nothing about 3D: a model that learned something beats it. No geometry (points None)."""

    checkpoint_kind = CheckpointKind.BASELINE
    name = "nearest-view"

    def __init__(self, device: str = "auto"):
        self.device = "cpu"  # numpy only; the requested device does not matter

    def predict(self, object_dir: str | Path, protocol: Protocol, name: str = "") -> Prediction:
        from geolrm_bench import gobjaverse  # torch (ViewBatch): only when predicting

        vin = gobjaverse.load_views(object_dir, views=protocol.input_views, background=protocol.background,
                                    resolution=protocol.resolution)
        c2w_t, _, _ = gobjaverse.load_cameras(object_dir, protocol.test_views)
        pick = nearest_view_indices(np.asarray(c2w_t)[:, :3, 3], vin.c2w_opengl[:, :3, 3].numpy())
        images = vin.images.float().clamp(0, 1).numpy()[pick]
        src = [int(protocol.input_views[k]) for k in pick]
        return Prediction(images=np.ascontiguousarray(images), points=None,  # no reconstruction: no cost
                          device="cpu", extra={"source": f"input views {src} for test views "
                                                         f"{list(protocol.test_views)}"})


#: reference methods by name (``MethodSpec.baseline``)
BASELINES: dict[str, type[Method]] = {"nearest-view": NearestViewMethod}


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2,
              "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4,
              "double": 8, "float64": 8}


def ply_header_counts(path: Path) -> dict[str, int]:
    """``{element: count}`` from a PLY header, after checking the file can hold that many: an
    element of ``count`` rows needs at least ``count x row bytes`` (binary; lists counted at
    their length byte) or ``count x 2 x properties`` bytes (ASCII). BenchError naming the file."""
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise BenchError("not a PLY file (no 'ply' ... 'end_header' header)", path)
    body = max(0, path.stat().st_size - (head.find(b"\n", end) + 1))
    fmt, counts, rows, name = "", {}, {}, None
    for line in head[:end].decode("ascii", "replace").splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "format" and len(tok) > 1:
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3:
            try:
                name, counts[tok[1]] = tok[1], int(tok[2])
            except ValueError:
                raise BenchError(f"bad PLY header line {line.strip()!r}", path) from None
            rows[name] = 0
        elif tok[0] == "property" and name is not None:
            if fmt == "ascii":
                rows[name] += 2  # at least one digit and a separator per value
            elif tok[1] == "list" and len(tok) >= 3:
                rows[name] += _PLY_SIZES.get(tok[2], 1)  # the length; an empty list at least
            else:
                rows[name] += _PLY_SIZES.get(tok[1], 1)
    need = sum(counts[k] * rows[k] for k in counts)
    if need > body:
        declared = ", ".join(f"{v} {k}" for k, v in counts.items())
        raise BenchError(f"PLY header declares {declared} but the file holds only {body} bytes of data "
                         f"(at least {need} needed): truncated or corrupt", path)
    return counts


def load_prediction_mesh(path: Path):
    """A predicted mesh, validated like the 3DGS path: a PLY's header counts must fit the file
    and match what was read, every vertex must be finite and there must be faces (trimesh would
    otherwise drop bad vertices silently). Then processed as ``trimesh.load`` does by default."""
    import trimesh  # heavy: only for mesh predictions

    path = Path(path)
    counts = ply_header_counts(path) if path.suffix.lower() == ".ply" else {}
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file
        raise BenchError(f"unreadable mesh ({one_line(e)})", path) from None
    verts = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))))
    if "vertex" in counts and len(verts) != counts["vertex"]:
        raise BenchError(f"PLY header declares {counts['vertex']} vertices, {len(verts)} were read", path)
    bad = int((~np.isfinite(verts)).any(axis=1).sum()) if len(verts) else 0
    if bad:
        raise BenchError(f"mesh has {bad} non-finite (NaN/inf) vertices", path)
    if len(getattr(mesh, "faces", [])) == 0:
        raise BenchError("mesh has no faces", path)
    mesh.process()
    return mesh


def _is_3dgs_ply(path: Path) -> bool:
    """True when the PLY header (first 4 KiB) declares an ``opacity`` vertex property."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    end = head.find(b"end_header")
    header = head[: end if end >= 0 else len(head)].decode("ascii", "replace")
    return bool(re.search(r"property\s+\w+\s+opacity\b", header))


def _read_png_on_bg(path: Path, background, size: int) -> np.ndarray:  # -> [3, H, W]
    """A PNG as [3, size, size] float32 in [0, 1], alpha-composited on ``background`` (RGB in
    [0, 1]) and box-resized to ``size`` when needed; BenchError naming the file if unreadable."""
    from PIL import Image  # only for PNG predictions

    try:
        im = Image.open(path)
        im.load()
    except Exception as e:
        raise BenchError(f"unreadable PNG ({one_line(e)})", path) from None
    im = im.convert("RGBA")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BOX)
    a = np.asarray(im, dtype=np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:] + np.asarray(background, np.float32) * (1 - a[..., 3:])
    return rgb.transpose(2, 0, 1).copy()
