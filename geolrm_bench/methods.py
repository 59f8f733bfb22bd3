"""Method adapters: turn one rendered object into test-view images and prediction points,
and score them against the ground truth.

A *method* is anything with ``device`` / ``checkpoint_kind`` / ``preset`` /
``checkpoint_sha256`` attributes and a ``predict(object_dir, protocol[, name])`` returning a
:class:`Prediction`:

- :class:`GeoLRMMethod`: the bundled GeoLRM (official ``.ckpt``, one of our
  ``from_pretrained`` folders, or a preset with random weights) reconstructs 3D Gaussians from
  the protocol's input views and rasterizes them at the test views.
- :class:`PredictionsMethod`: method-agnostic; another method's outputs on disk, per object
  ``root/<object>/`` holding a 3DGS ``.ply`` (rasterized with :mod:`geolrm_bench.model.rasterize`), a mesh
  (``.obj/.glb/.gltf/.ply/.off/.stl``, rendered with :func:`geolrm_bench.rendering.render_views`)
  or the test views as ``<NNNNN>.png`` (no geometry then); an optional ``cost.json`` with
  ``inference_s`` / ``memory_gb`` / ``device`` supplies the method's cost.

Frames and cameras: every prediction (Gaussians, mesh, points) is in the **normalised object
frame** (Z-up, object inside [-0.5, 0.5]^3, see :mod:`geolrm_bench.datasets`). Views come from
:func:`geolrm_bench.gobjaverse.load_views`: the files hold OpenCV camera-to-world matrices
(x right, y down, z forward); the model and the Gaussian rasterizer take the **OpenGL**
camera-to-world (``ViewBatch.c2w_opengl``: x right, y up, looking down -z) and normalised
intrinsics (``fx/W, fy/H, cx/W = cy/H = 0.5``). Images are ``[T, 3, H, W]`` float32 in [0, 1],
alpha-composited on the protocol's background (white), at ``protocol.resolution`` px.

Scoring (:func:`image_scores`, :func:`geometry_scores`): PSNR / SSIM per test view; Chamfer /
F-score headline (``chamfer`` / ``fscore``) with the object scaled to [-1, 1]^3 (the usual LRM
evaluation frame), beside them the same in the ground-truth mesh's own frame in metres
(``chamfer_m`` / ``fscore_m``: prediction points mapped back with the inverse of
``ObjectAsset.to_normalized`` and multiplied by ``ObjectAsset.unit_m``) and in the normalised
frame, longest side 1 (``chamfer_unitbox`` / ``fscore_unitbox``).

Heavy libraries (torch, the model, trimesh, pyrender, PIL) are imported lazily, so importing this
module is cheap (Ray workers import it to unpickle tasks).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import read_json, sha256_file
from geolrm_bench.protocol import Protocol

MESH_EXTS = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
GIB = float(1 << 30)


def preload_torch_stack() -> None:
    """Import torchvision (and with it torch._dynamo -> triton) BEFORE any OSMesa rendering.

    Observed here: once pyrender's OSMesa context is created in a process (Mesa links its own
    LLVM), a later first import of torchvision/triton segfaults (LLVM symbol clash). Importing
    them first is harmless, so every stage that may render calls this first.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # torchvision absent or broken: nothing to protect
        pass


def safe_name(name: str) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9_.+-]`` replaced by ``_``
    (file names of per-object records, caches and prediction folders)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


# --------------------------------------------------------------------------------------------
# the prediction bundle
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


def _resolve_device(device: str) -> str:
    """``auto``/empty -> ``cuda`` when available else ``cpu``; ``cuda*`` without CUDA is a BenchError."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but CUDA is not available")
    return device


# --------------------------------------------------------------------------------------------
# GeoLRM
# --------------------------------------------------------------------------------------------
class GeoLRMMethod:
    """GeoLRM from an official checkpoint, one of our saved folders, or a preset (random weights).

    Args:
        checkpoint: an official ``.ckpt`` file or a ``GeoLRM.from_pretrained`` folder; None for
            a preset with random weights (``torch.manual_seed(seed)`` before building).
        preset: model preset name when no checkpoint (default ``tiny``).
        device: ``cpu``, ``cuda[:i]`` or ``auto``.
        max_tokens: reconstruction token cap (None: the preset's).
        input_size: model input image size in px (None: the preset's).
        seed: seeds the random weights and the reconstruction's generator (CPU).

    Attributes ``checkpoint_kind`` (``official`` / ``pretrained`` / ``random``), ``preset`` and
    ``checkpoint_sha256`` describe the model for the report.
    """

    def __init__(self, checkpoint: str | None, preset: str | None, device: str, max_tokens: int | None,
                 input_size: int | None, seed: int = 0):
        import torch

        self.device = _resolve_device(device)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.seed = seed
        self.checkpoint_sha256 = ""
        if checkpoint:
            path = Path(checkpoint)
            if not path.exists():
                raise BenchError("checkpoint not found", path)
            if path.is_dir():
                from geolrm_bench.model.geolrm import GeoLRM

                self.model = GeoLRM.from_pretrained(path)
                self.checkpoint_kind = "pretrained"
                weights = sorted(path.glob("*.safetensors"))
                self.checkpoint_sha256 = sha256_file(weights[0]) if weights else ""
            else:
                from geolrm_bench.model.checkpoint import load_official

                self.model = load_official(path)
                self.checkpoint_kind = "official"
                self.checkpoint_sha256 = sha256_file(path)
            self.preset = getattr(self.model.cfg, "name", "")
        else:
            from geolrm_bench.model.config import get_config
            from geolrm_bench.model.geolrm import GeoLRM

            self.preset = preset or "tiny"
            torch.manual_seed(seed)
            self.model = GeoLRM(get_config(self.preset))
            self.checkpoint_kind = "random"
        if input_size is not None:
            self.model.cfg.input_size = int(input_size)
        self.model = self.model.to(self.device).eval()

    def predict(self, object_dir: str, protocol: Protocol) -> Prediction:
        """Reconstruct from ``protocol.input_views`` of the GObjaverse folder ``object_dir``
        (inputs at their stored size; OpenGL c2w + normalised intrinsics to the model), then
        rasterize the Gaussians at ``protocol.test_views`` at ``protocol.resolution`` px.

        Time and peak memory (:func:`geolrm_bench.metrics.measure_cost`) cover the
        reconstruction alone. Points: ``protocol.num_gt_points`` sampled from the Gaussians
        (normalised frame, seed ``protocol.gt_seed``); None with a warning in ``extra`` when
        there are none (e.g. every Gaussian below the opacity threshold).
        """
        import torch

        from geolrm_bench import gobjaverse
        from geolrm_bench.metrics import measure_cost, prediction_points
        from geolrm_bench.model.rasterize import render_gaussians

        vin = gobjaverse.load_views(object_dir, views=protocol.input_views, background=protocol.background)
        vt = gobjaverse.load_views(object_dir, views=protocol.test_views, background=protocol.background,
                                   resolution=protocol.resolution)
        dev = self.device
        images = vin.images[None].to(dev)  # [1, V, 3, H, W]
        c2w = vin.c2w_opengl[None].to(dev)  # [1, V, 4, 4]
        K = vin.intrinsics[None].to(dev)  # [1, V, 3, 3]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        with torch.no_grad():
            with measure_cost(device=dev) as cost:
                g = self._reconstruct(images, c2w, K, gen)
            g0 = g[0] if g.means.dim() == 3 else g
            H = W = protocol.resolution
            out = render_gaussians(g0, vt.c2w_opengl.to(dev), vt.intrinsics.to(dev), H, W,
                                   background=protocol.background)
        rgb = out["rgb"].clamp(0, 1).float().cpu().numpy()
        g_cpu = g0.to("cpu")
        try:
            pts = np.asarray(prediction_points(g_cpu, method="gaussians", n=protocol.num_gt_points,
                                               seed=protocol.gt_seed), dtype=np.float64)
        except ValueError as e:  # e.g. every Gaussian below the opacity threshold
            pts = None
            extra = {"warning": f"no prediction points: {one_line(e)}"}
        else:
            extra = {}
        extra["memory_method"] = cost.memory_method
        return Prediction(images=rgb, points=pts, inference_s=float(cost.seconds),
                          memory_gb=float(cost.peak_memory_bytes) / GIB, num_gaussians=len(g_cpu),
                          device=str(cost.device_name), extra=extra)

    def _reconstruct(self, images, c2w, K, gen):
        return self.model.reconstruct(images, c2w, K, max_tokens=self.max_tokens, generator=gen)


# --------------------------------------------------------------------------------------------
# another method's outputs on disk
# --------------------------------------------------------------------------------------------
class PredictionsMethod:
    """Another method's outputs under ``root/<object>/`` (3DGS .ply, a mesh, or test-view PNGs).

    Per object folder, the first of these that exists is used: a 3DGS ``.ply`` (a PLY whose
    header has an ``opacity`` property; loaded with ``geolrm_bench.model.ply.load_ply``), else a mesh file
    (:data:`MESH_EXTS`), else ``<NNNNN>.png`` for every test view (RGBA composited on the
    background, box-resized to the protocol's resolution). All in the normalised object frame.
    """

    checkpoint_kind = "external"
    preset = ""
    checkpoint_sha256 = ""

    def __init__(self, root: str, device: str = "auto"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BenchError("predictions folder not found", self.root)
        self.device = _resolve_device(device)

    def object_folder(self, name: str) -> Path:
        """``root/<name>``, ``root/<safe name>`` or ``root/<last part of a '__'-joined name>``."""
        for cand in (self.root / name, self.root / safe_name(name), self.root / name.split("__")[-1]):
            if cand.is_dir():
                return cand
        raise BenchError(f"no predictions for object {name!r}", self.root / name)

    def predict(self, object_dir: str, protocol: Protocol, name: str) -> Prediction:
        """The test views (cameras from the GObjaverse folder ``object_dir``) and points of object
        ``name``; BenchError when its folder has no usable output."""
        import torch

        from geolrm_bench import gobjaverse

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
            from geolrm_bench.metrics import prediction_points
            from geolrm_bench.model.rasterize import render_gaussians

            load_ply = importlib.import_module("geolrm_bench.model.ply").load_ply  # engineer 6's module

            g = load_ply(plys[0]).to(self.device)
            with torch.no_grad():
                out = render_gaussians(g, vt.c2w_opengl.to(self.device), vt.intrinsics.to(self.device), H, W,
                                       background=protocol.background)
            pts = np.asarray(prediction_points(g.to("cpu"), method="gaussians", n=protocol.num_gt_points,
                                               seed=protocol.gt_seed), dtype=np.float64)
            return Prediction(images=out["rgb"].clamp(0, 1).float().cpu().numpy(), points=pts,
                              num_gaussians=len(g), extra={"source": plys[0].name}, **kw)
        if meshes:

            from geolrm_bench import rendering
            from geolrm_bench.metrics import prediction_points

            preload_torch_stack()  # before the first OSMesa context of this process
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
    import trimesh

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
    from PIL import Image

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


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def image_scores(images: np.ndarray, gt_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM per test view: ``[T, 3, H, W]`` x2 in [0, 1] -> ``([T], [T])`` float64,
    with :func:`geolrm_bench.metrics.psnr` / :func:`geolrm_bench.metrics.ssim`."""
    import torch

    from geolrm_bench.metrics import psnr, ssim

    p = torch.from_numpy(np.ascontiguousarray(images)).float()
    g = torch.from_numpy(np.ascontiguousarray(gt_images)).float()
    ps = np.asarray(torch.as_tensor(psnr(p, g)).double().reshape(-1), dtype=np.float64)
    ss = np.asarray(torch.as_tensor(ssim(p, g)).double().reshape(-1), dtype=np.float64)
    return ps, ss


#: the headline geometry frame: the normalised object scaled to [-1, 1]^3 (longest side 2), the
#: usual LRM evaluation frame; the paper's Chamfer 0.167 / F-score@0.2 0.892 are read as in it
BOX2_SCALE = 2.0


def geometry_scores(points: np.ndarray, gt_points: np.ndarray, to_normalized: np.ndarray,
                    unit_m: float = 1.0, tau: float = 0.2) -> dict[str, float]:
    """Chamfer and F-score@``tau`` of prediction points against ground-truth points, in three frames.

    Args:
        points: [M, 3] prediction points in the normalised object frame ([-0.5, 0.5]^3).
        gt_points: [N, 3] ground-truth surface points in the GT frame (the dataset file's axes,
            origin and units).
        to_normalized: [4, 4] GT frame -> normalised frame (``ObjectAsset.to_normalized``).
        unit_m: metres per GT-frame unit (``ObjectAsset.unit_m``: HOPE 0.01, Omni 0.001).
        tau: F-score threshold, the same number in every frame (its units: that frame's).

    Returns:
        ``chamfer`` / ``fscore`` (the headline, comparable with the paper): the object scaled
        to [-1, 1]^3 (normalised frame x :data:`BOX2_SCALE`, longest side 2; an assumption:
        the paper does not state its frame, this is the usual LRM evaluation frame);
        ``chamfer_m`` / ``fscore_m``: the GT frame in metres (predictions mapped back with the
        inverse of ``to_normalized``, both sets scaled by ``unit_m``; ``tau`` in metres);
        ``chamfer_unitbox`` / ``fscore_unitbox``: the normalised frame (longest side 1).
    """
    from geolrm_bench.datasets import points_to_gt_frame, points_to_normalized_frame
    from geolrm_bench.metrics import geometry_metrics

    pred_norm = np.asarray(points, np.float64)
    gt_pts = np.asarray(gt_points, np.float64)
    gt_norm = points_to_normalized_frame(gt_pts, to_normalized)
    gm = geometry_metrics(points_to_gt_frame(pred_norm, to_normalized) * unit_m, gt_pts * unit_m,
                          taus=(tau,), frame="gt")
    gn = geometry_metrics(pred_norm, gt_norm, taus=(tau,), frame="normalized")
    gb = geometry_metrics(pred_norm * BOX2_SCALE, gt_norm * BOX2_SCALE, taus=(tau,), frame="normalized")
    return {"chamfer": float(gb["chamfer"]), "fscore": float(_fscore_value(gb, tau)),
            "chamfer_m": float(gm["chamfer"]), "fscore_m": float(_fscore_value(gm, tau)),
            "chamfer_unitbox": float(gn["chamfer"]), "fscore_unitbox": float(_fscore_value(gn, tau))}


def _fscore_value(gm: dict, tau: float) -> float:
    """The F-score at ``tau`` from a :func:`geolrm_bench.metrics.geometry_metrics` dict."""
    for key in (f"fscore@{tau:g}", f"fscore@{tau}", "fscore"):
        if key in gm:
            return gm[key]
    keys = [k for k in gm if k.startswith("fscore")]
    if keys:
        return gm[keys[0]]
    raise BenchError(f"geometry_metrics returned no fscore (keys {sorted(gm)})")
