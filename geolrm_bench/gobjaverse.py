"""The GObjaverse on-disk format: PNG / JSON / ``_nd.exr`` per view, depth cleaning, ``load_views``.

Layout of one object (ours and the real dataset's)::

    <root>/<object>/<NNNNN>/<NNNNN>.png       RGBA, alpha = mask, transparent background
    <root>/<object>/<NNNNN>/<NNNNN>.json      camera: x, y, z, origin (c2w columns, OpenCV axes), x_fov, y_fov
    <root>/<object>/<NNNNN>/<NNNNN>_nd.exr    R, G, B = Unity-style world normals, A = z-depth

with ``NNNNN`` = 00000 .. 00039 (see :mod:`geolrm_bench.cameras` for the layout) and
``<object>`` possibly two levels deep in the real dataset (``<dir>/<id>``).

Conventions:

- World frame: Z-up (Blender-style), object in [-0.5, 0.5]^3; cameras look at the origin.
- Camera JSON ``c2w`` is in OpenCV axes (x right, y down, z forward); OpenGL = ``c2w @ diag(1,-1,-1,1)``.
- EXR normals: stored channels ``(R, G, B) = (-nx, nz, -ny)`` where ``n`` is the world
  normal in the Blender (Z-up) frame; i.e. Blender normal = ``(-R, -B, G)``. Normals may
  be non-unit; 0 on background. Channel ``A`` = z-depth along the camera's forward axis
  (not ray length), world units, 0 on background. Read as float32 (float16 files accepted).
  Note: the brief names the channels by their EXR names (R, G, B, A); readers that use
  OpenCV see them in B, G, R, A order.
- Depth cleaning (official GeoLRM rule): depth ``< distance - 0.867`` is invalid
  (0.867 ~ sqrt(3)/2, the half-diagonal of the unit cube: nothing of the object can be
  nearer), and the valid mask is eroded with a 3x3 kernel (so pixels at depth edges,
  next to any invalid pixel, are dropped too).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geolrm_bench.cameras import (
    NUM_VIEWS,
    CameraJSON,
    camera_to_json_dict,
    opencv_to_opengl,
    read_camera_json,
    write_camera_json,
)
from geolrm_bench.errors import BenchError
from geolrm_bench.io import link_outside_root, read_json, write_bytes_atomic

_LOG = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported lazily (in load_views): writers and numpy readers never load it
    import torch

#: Depth nearer than ``camera distance - DEPTH_NEAR_MARGIN`` is invalid (official rule).
DEPTH_NEAR_MARGIN = 0.867
#: Name of our collection index (written by the renderer).
INDEX_NAME = "index.json"
#: Name of the real dataset's index (a JSON list of "dir/id").
GOBJAVERSE_INDEX_NAME = "gobjaverse_280k.json"


def view_name(index: int) -> str:
    """Folder / file stem of a view: ``f"{index:05d}"``."""
    return f"{int(index):05d}"


def view_paths(object_dir: str | Path, index: int) -> dict[str, Path]:
    """Paths ``png``, ``json``, ``exr`` of view ``index`` of an object folder."""
    n = view_name(index)
    d = Path(object_dir) / n
    return {"png": d / f"{n}.png", "json": d / f"{n}.json", "exr": d / f"{n}_nd.exr"}


# ----------------------------------------------------------------------------- normals frames

def blender_to_unity_normals(n):  # [..., 3] -> [..., 3]
    """Blender (Z-up world) normals -> stored EXR channels ``(R, G, B) = (-nx, nz, -ny)``. numpy/torch."""
    return _stack3(-n[..., 0], n[..., 2], -n[..., 1])


def unity_to_blender_normals(rgb):  # [..., 3] -> [..., 3]
    """Stored EXR channels ``(R, G, B)`` -> Blender (Z-up world) normals ``(-R, -B, G)``. numpy/torch."""
    return _stack3(-rgb[..., 0], -rgb[..., 2], rgb[..., 1])


def _stack3(a, b, c):
    torch_mod = sys.modules.get("torch")  # a tensor implies torch is loaded
    if torch_mod is not None and isinstance(a, torch_mod.Tensor):
        return torch_mod.stack([a, b, c], dim=-1)
    return np.stack([a, b, c], axis=-1)


# ----------------------------------------------------------------------------- PNG

def read_png_rgba(path: str | Path) -> np.ndarray:  # [H, W, 4] float32 in [0, 1]
    """Read a PNG as RGBA float32 in [0, 1] (no alpha -> opaque; 8 or 16 bit). Bad file -> BenchError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                g = np.asarray(im, dtype=np.float32) / 65535.0
                return np.stack([g, g, g, np.ones_like(g)], -1)
            arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise BenchError("image not found", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BenchError(f"unreadable PNG ({e})", path) from None
    return arr


def encode_png(rgba: np.ndarray, compress_level: int = 1) -> bytes:  # [H, W, 4] uint8
    """PNG bytes of an RGBA uint8 image (``compress_level`` 0..9, 1 = fast)."""
    import io as _io

    from PIL import Image

    rgba = np.asarray(rgba)
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] not in (3, 4):
        raise BenchError(f"PNG writer needs uint8 [H, W, 3|4], got {rgba.dtype} {rgba.shape}")
    buf = _io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png_rgba(path: str | Path, rgba: np.ndarray, compress_level: int = 1) -> Path:
    """Atomically write an RGBA uint8 [H, W, 4] PNG."""
    return write_bytes_atomic(path, encode_png(rgba, compress_level))


# ----------------------------------------------------------------------------- EXR

EXR_COMPRESSIONS = ("none", "rle", "zips", "zip", "piz", "pxr24")


def _exr_compression(name: str):
    import OpenEXR

    table = {"none": OpenEXR.NO_COMPRESSION, "rle": OpenEXR.RLE_COMPRESSION,
             "zips": OpenEXR.ZIPS_COMPRESSION, "zip": OpenEXR.ZIP_COMPRESSION,
             "piz": OpenEXR.PIZ_COMPRESSION, "pxr24": OpenEXR.PXR24_COMPRESSION}
    try:
        return table[name.lower()]
    except KeyError:
        raise BenchError(f"unknown EXR compression {name!r} (one of {', '.join(EXR_COMPRESSIONS)})") from None


def write_nd_exr(path: str | Path, normals_blender: np.ndarray, depth: np.ndarray,
                 compression: str = "rle", half: bool = False, atomic: bool = True) -> Path:
    """Write a GObjaverse ``_nd.exr`` (atomically unless ``atomic=False``, e.g. inside ``io.atomic_dir``).

    Args:
        normals_blender: [H, W, 3] world normals in the Blender Z-up frame (0 on background);
            stored as ``(R, G, B) = (-nx, nz, -ny)``.
        depth: [H, W] z-depth along the camera forward axis, world units, 0 on background;
            stored in channel ``A``.
        compression: one of ``EXR_COMPRESSIONS``. half: store float16 instead of float32.
    """
    import OpenEXR

    path = Path(path)
    n = np.asarray(normals_blender, dtype=np.float32)
    d = np.asarray(depth, dtype=np.float32)
    if n.ndim != 3 or n.shape[2] != 3 or d.shape != n.shape[:2]:
        raise BenchError(f"EXR writer needs normals [H, W, 3] and depth [H, W], got {n.shape} and {d.shape}",
                         path)
    rgb = blender_to_unity_normals(n)
    dt = np.float16 if half else np.float32
    channels = {c: np.ascontiguousarray(rgb[..., i], dtype=dt) for i, c in enumerate("RGB")}
    channels["A"] = np.ascontiguousarray(d, dtype=dt)
    header = {"compression": _exr_compression(compression), "type": OpenEXR.scanlineimage}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.exr") if atomic else path
    try:
        # single-threaded encode: faster than OpenEXR's thread pool on few, shared cores (measured)
        with OpenEXR.File(header, channels, num_threads=0) as f:
            f.write(str(tmp))
        if atomic:
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_nd_exr(path: str | Path) -> tuple[np.ndarray, np.ndarray]:  # [H, W, 3], [H, W]
    """Read a ``_nd.exr``: (normals in the **Blender** Z-up frame [H, W, 3], z-depth [H, W]), float32.

    The stored Unity-style channels ``(R, G, B)`` are decoded to ``(-R, -B, G)``; depth is
    channel ``A`` (world units, 0 = background). Missing/unreadable file -> BenchError.
    """
    import OpenEXR

    path = Path(path)
    if not path.is_file():
        raise BenchError("EXR not found", path)
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            chans = {name: np.asarray(ch.pixels) for name, ch in f.channels().items()}
    except Exception as e:  # OpenEXR raises plain RuntimeError / ValueError on corrupt data
        raise BenchError(f"unreadable EXR ({type(e).__name__}: {e})", path) from None
    for c in "RGBA":  # Blender multilayer names, e.g. "ViewLayer.Combined.R"
        if c not in chans:
            cands = [k for k in chans if k.endswith("." + c)]
            if len(cands) == 1:
                chans[c] = chans[cands[0]]
    missing = [c for c in "RGBA" if c not in chans]
    if missing:
        raise BenchError(f"EXR lacks channel(s) {', '.join(missing)} (has {', '.join(sorted(chans))})", path)
    rgb = np.stack([chans[c] for c in "RGB"], -1).astype(np.float32)
    depth = chans["A"].astype(np.float32)
    return unity_to_blender_normals(rgb), depth


# ----------------------------------------------------------------------------- depth cleaning

def clean_depth(depth: np.ndarray, distance: float, margin: float = DEPTH_NEAR_MARGIN,
                erode: bool = True) -> np.ndarray:  # [H, W] -> [H, W]
    """Official GObjaverse depth cleaning: invalid where ``depth < distance - margin`` (0 included),
    then the valid mask eroded with a 3x3 kernel (border pixels count as invalid neighbours).

    Args:
        depth: [H, W] z-depth, world units. distance: camera centre to origin, world units.
    Returns:
        [H, W] float32 copy with invalid pixels set to 0.
    """
    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d >= distance - margin)
    if erode:
        valid = _erode3x3(valid)
    return np.where(valid, d, 0.0).astype(np.float32)


def _erode3x3(mask: np.ndarray) -> np.ndarray:  # [H, W] bool
    p = np.pad(mask, 1, constant_values=False)
    H, W = mask.shape
    out = np.ones_like(mask)
    for di in range(3):
        for dj in range(3):
            out &= p[di:di + H, dj:dj + W]
    return out


# ----------------------------------------------------------------------------- loading views

@dataclass
class ViewBatch:
    """Views of one object (torch, channels first; Z-up world; see module docstring).

    images: [V, 3, H, W] float32 in [0, 1], composited on ``background``.
    masks: [V, 1, H, W] float32 alpha in [0, 1].
    depths: [V, 1, H, W] float32 z-depth, world units (cleaned when asked; 0 = invalid).
    normals: [V, 3, H, W] float32 world normals, Blender frame (decoded from the Unity-style EXR).
    c2w_opencv / c2w_opengl: [V, 4, 4] float32 camera-to-world (OpenCV / OpenGL axes).
    intrinsics: [V, 3, 3] float32 normalised (fx/W, fy/H, cx/W = cy/H = 0.5).
    view_indices: the view numbers loaded (0..39).
    """

    images: torch.Tensor  # [V, 3, H, W]
    masks: torch.Tensor  # [V, 1, H, W]
    depths: torch.Tensor  # [V, 1, H, W]
    normals: torch.Tensor  # [V, 3, H, W]
    c2w_opencv: torch.Tensor  # [V, 4, 4]
    c2w_opengl: torch.Tensor  # [V, 4, 4]
    intrinsics: torch.Tensor  # [V, 3, 3]
    view_indices: list[int]

    def __len__(self) -> int:
        return len(self.view_indices)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:  # [V, C, H, W]
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


#: largest allowed |R^T R - I| entry and |det R - 1| of a camera JSON's rotation (x, y, z columns);
#: files store 7-8 significant digits, so a real rotation is within ~1e-6
ROTATION_TOLERANCE = 1e-3


def check_camera_rotation(c2w_opencv: np.ndarray, path: str | Path,
                          tol: float = ROTATION_TOLERANCE) -> None:
    """Raise BenchError naming ``path`` unless the c2w's 3x3 block is a rotation: finite,
    orthonormal columns (max |R^T R - I| <= ``tol``) and det within ``tol`` of +1 (no
    reflection, no zero or repeated axis). A singular camera would otherwise be used as is."""
    R = np.asarray(c2w_opencv, dtype=np.float64)[:3, :3]
    if not np.isfinite(R).all():
        raise BenchError("camera rotation (x, y, z) has non-finite entries", path)
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if err > tol or abs(det - 1.0) > tol:
        raise BenchError(f"camera x, y, z axes are not a rotation (max |R^T R - I| = {err:.3g}, "
                         f"det = {det:.3g}; tolerance {tol:g})", path)


def read_view_camera(path: str | Path) -> CameraJSON:
    """:func:`~geolrm_bench.cameras.read_camera_json` plus :func:`check_camera_rotation`: the
    one reader of view cameras for loading, occupancy and reconstruction."""
    cam = read_camera_json(path)
    check_camera_rotation(cam.c2w_opencv, path)
    return cam


def load_cameras(object_dir: str | Path, views: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:  # [V,4,4], [V,3,3], (H, W)
    """The cameras of ``views`` without their images: OpenGL c2w ``[V, 4, 4]`` and normalised
    intrinsics ``[V, 3, 3]`` (float32, from the view JSONs) and the ``(H, W)`` of the first view's
    PNG (read from its header). For rendering new images at the views' cameras."""
    from PIL import Image  # PIL loads lazily in this module (the PNG reader above does the same)

    cams = [read_view_camera(view_paths(object_dir, int(i))["json"]) for i in views]
    png = view_paths(object_dir, int(views[0]))["png"]
    try:
        with Image.open(png) as im:
            w, h = im.size
    except (FileNotFoundError, OSError) as e:
        raise BenchError(f"cannot read image size ({e})", png) from None
    c2w = np.stack([opencv_to_opengl(c.c2w_opencv) for c in cams]).astype(np.float32)
    return c2w, np.stack([c.intrinsics for c in cams]).astype(np.float32), (h, w)


def load_view_arrays(object_dir: str | Path, index: int, clean: bool = True) -> dict[str, object]:
    """One view as numpy: ``rgba`` [H,W,4] float32, ``normals`` [H,W,3] (Blender frame), ``depth`` [H,W]
    (cleaned if ``clean``), ``camera`` (:class:`~geolrm_bench.cameras.CameraJSON`)."""
    p = view_paths(object_dir, index)
    cam: CameraJSON = read_view_camera(p["json"])
    rgba = read_png_rgba(p["png"])
    normals, depth = read_nd_exr(p["exr"])
    if depth.shape != rgba.shape[:2]:
        raise BenchError(f"EXR size {depth.shape} differs from PNG size {rgba.shape[:2]}", p["exr"])
    if clean:
        depth = clean_depth(depth, cam.distance)
    return {"rgba": rgba, "normals": normals, "depth": depth, "camera": cam}


def load_views(object_dir: str | Path, views: Sequence[int] | None = None,
               background: Sequence[float] = (1.0, 1.0, 1.0), resolution: int | None = None,
               clean: bool = True) -> ViewBatch:
    """Load views of a GObjaverse object folder (ours or a real download) into a :class:`ViewBatch`.

    Args:
        object_dir: folder holding ``00000/`` .. ``00039/``.
        views: view indices (default: all 40).
        background: RGB in [0, 1] the RGBA images are composited on (at file resolution).
        resolution: output side length in pixels (images/masks: area or antialiased
            bilinear; depth/normals: nearest); None keeps the file resolution.
        clean: apply :func:`clean_depth` (official rule) before resizing.

    Conventions: Z-up world; c2w from the JSON (OpenCV) plus its OpenGL copy; normalised
    intrinsics from the JSON fovs. Unreadable/missing files raise BenchError naming the file.
    """
    import torch

    object_dir = Path(object_dir)
    if not object_dir.is_dir():
        raise BenchError("object folder not found", object_dir)
    idx = list(range(NUM_VIEWS)) if views is None else [int(v) for v in views]
    if not idx:
        raise BenchError("no views requested", object_dir)
    bg = np.asarray(background, dtype=np.float32).reshape(-1)
    if bg.shape != (3,):
        raise BenchError(f"background must be 3 values, got {tuple(background)}")
    imgs, masks, depths, normals, c2ws, Ks = [], [], [], [], [], []
    size = None
    for i in idx:
        a = load_view_arrays(object_dir, i, clean=clean)
        rgba = a["rgba"]
        if size is None:
            size = rgba.shape[:2]
        elif rgba.shape[:2] != size:
            raise BenchError(f"view {view_name(i)} has size {rgba.shape[:2]}, "
                             f"view {view_name(idx[0])} {size}", object_dir)
        alpha = rgba[..., 3:4]
        imgs.append(rgba[..., :3] * alpha + bg * (1.0 - alpha))
        masks.append(alpha)
        depths.append(a["depth"][..., None])
        normals.append(a["normals"])
        cam: CameraJSON = a["camera"]
        c2ws.append(cam.c2w_opencv)
        Ks.append(cam.intrinsics)

    def to_t(xs):  # list of [H, W, C] -> [V, C, H, W]
        return torch.from_numpy(np.stack(xs).astype(np.float32)).permute(0, 3, 1, 2).contiguous()

    images_t, masks_t, depths_t, normals_t = to_t(imgs), to_t(masks), to_t(depths), to_t(normals)
    if resolution is not None:
        out = (int(resolution), int(resolution))
        images_t = _resize(images_t, out, "area").clamp(0, 1)
        masks_t = _resize(masks_t, out, "area").clamp(0, 1)
        depths_t = _resize(depths_t, out, "nearest")
        normals_t = _resize(normals_t, out, "nearest")
    c2w = torch.from_numpy(np.stack(c2ws)).float()
    return ViewBatch(images=images_t, masks=masks_t, depths=depths_t, normals=normals_t,
                     c2w_opencv=c2w, c2w_opengl=opencv_to_opengl(c2w),
                     intrinsics=torch.from_numpy(np.stack(Ks)).float(), view_indices=idx)


# ----------------------------------------------------------------------------- writing one view

def write_view(object_dir: str | Path, index: int, rgba: np.ndarray, c2w_opencv: np.ndarray,
               normals_blender: np.ndarray, depth: np.ndarray, fov: tuple[float, float] | None = None,
               exr_compression: str = "rle", png_compress_level: int = 1,
               atomic: bool = True) -> dict[str, Path]:
    """Write one view (PNG RGBA uint8 [H,W,4], JSON with c2w in OpenCV axes, ``_nd.exr``).

    ``fov`` = (x_fov, y_fov) in radians (default 39.6 deg). Normals in the Blender Z-up
    frame, depth = z-depth (world units, 0 background). Each file is written atomically
    (temporary name, fsync, rename) unless ``atomic=False``: callers that write into an
    ``io.atomic_dir`` (all-or-nothing object folder) skip the per-file cost.
    """
    p = view_paths(object_dir, index)
    p["png"].parent.mkdir(parents=True, exist_ok=True)
    if fov is None:
        f = math.radians(39.6)
        fov = (f, f)
    if atomic:
        write_png_rgba(p["png"], rgba, png_compress_level)
        write_camera_json(p["json"], c2w_opencv, fov[0], fov[1])
    else:
        p["png"].write_bytes(encode_png(rgba, png_compress_level))
        p["json"].write_text(json.dumps(camera_to_json_dict(c2w_opencv, fov[0], fov[1]), indent=2) + "\n")
    write_nd_exr(p["exr"], normals_blender, depth, compression=exr_compression, atomic=atomic)
    return p


# ----------------------------------------------------------------------------- collections

def is_gobjaverse_object(path: str | Path) -> bool:
    """True when ``path`` holds view 00000 (its PNG and JSON) in the GObjaverse layout."""
    p = view_paths(path, 0)
    return p["png"].is_file() and p["json"].is_file()


def list_rendered_objects(root: str | Path) -> list[Path]:
    """Object folders under ``root``, sorted by their path relative to ``root``.

    Order of sources: our ``index.json`` (``{"objects": [name, ...]}`` or a plain list of
    names), else a GObjaverse ``gobjaverse_280k.json`` (list of ``"dir/id"``; entries whose
    folder is absent locally are skipped), else a scan of folders one or two levels deep
    that pass :func:`is_gobjaverse_object`. A malformed index -> BenchError naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchError("rendered collection folder not found", root)
    for name in (INDEX_NAME, GOBJAVERSE_INDEX_NAME):
        idx_path = root / name
        if not idx_path.is_file():
            continue
        data = read_json(idx_path)
        if isinstance(data, dict):
            data = data.get("objects")
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise BenchError("index must be a list of object names (or {'objects': [...]})", idx_path)
        out = [root / x for x in data]
        if name == GOBJAVERSE_INDEX_NAME:
            out = [p for p in out if p.is_dir()]
        warn_links_outside(root, out)
        return out
    found: list[Path] = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if is_gobjaverse_object(p):
            found.append(p)
        else:
            found.extend(q for q in sorted(p.iterdir())
                         if q.is_dir() and not q.name.startswith(".") and is_gobjaverse_object(q))
    warn_links_outside(root, found)
    return found


def warn_links_outside(root: Path, objects: list[Path]) -> list[str]:
    """Log (and return) one warning per object whose folder, or one of whose view folders, is
    reached through a symbolic link pointing outside ``root``: followed for reading, never
    written through (README, "Rules for outputs and errors")."""
    out = []
    for obj in objects:
        links = [obj] if link_outside_root(obj, root) is not None else []
        if not links and obj.is_dir():
            links = [obj / view_name(i) for i in range(NUM_VIEWS)
                     if (obj / view_name(i)).is_symlink() and link_outside_root(obj / view_name(i), root)]
        if links:
            out.append(f"{obj}: {', '.join(p.name for p in links)} is a symbolic link to "
                       f"{links[0].resolve()}, outside {root}; reading it there "
                       "(geolrm-bench never writes through links)")
            _LOG.warning("warning: %s", out[-1])
    return out
