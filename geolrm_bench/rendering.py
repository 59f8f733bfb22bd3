"""Offscreen renderer: meshes -> GObjaverse 40-view folders (pyrender, OSMesa by default, EGL on request).

Conventions:

- The mesh is already in the normalised object frame (Z-up world, inside [-0.5, 0.5]^3).
- Cameras: the GObjaverse layout of :mod:`geolrm_bench.cameras` (look at the origin,
  fov 39.6 deg, principal point at the image centre, pixel centres at +0.5); files hold
  c2w in OpenCV axes; pyrender is given the OpenGL c2w.
- Lighting (fixed, documented): **unlit albedo**. The colour pass uses pyrender's
  ``RenderFlags.FLAT``: each pixel is ``baseColorFactor * texture(uv) * vertex colour``
  with no lighting and no gamma change, so PNG values equal the texture's / vertex
  colours' stored (sRGB) values. When a material has a texture its base colour factor
  is reset to white (as Blender does for ``map_Kd``); materials are drawn opaque and
  double-sided (open scans show their inside instead of holes). No anti-aliasing.
- Layers of :func:`render_views` (V views, H = W = resolution):

  * ``rgba`` uint8 [V, H, W, 4]: colour on a white background, alpha 255 on the object, 0 elsewhere;
  * ``depth`` float32 [V, H, W]: z-depth along the camera forward axis, world units, 0 = background;
  * ``normals`` float32 [V, H, W, 3]: unit world normals (Blender Z-up frame) of the visible
    face (the geometric face normal, as stored by the mesh's winding), 0 on background;
  * ``c2w_opencv`` float64 [V, 4, 4]; ``fov`` (x_fov, y_fov) radians; ``views`` [V] indices.

- Normals come from a second, exact pass: every face is drawn flat with its index + 1
  encoded in 24-bit RGB, and the index is looked up in ``mesh.face_normals``.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geolrm_bench.cameras import (
    GOBJAVERSE_FOV_DEG,
    NUM_VIEWS,
    focal_from_fov,
    gobjaverse_c2w,
    opencv_to_opengl,
)
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.gobjaverse import INDEX_NAME, write_view
from geolrm_bench.io import atomic_dir, check_replaceable, remove_stale_temporaries, write_json_atomic

BACKENDS = ("osmesa", "egl")
METADATA_NAME = "metadata.json"
#: z range of the GL camera, world units (cameras sit 1.645 / 1.955 from an object in the unit cube)
ZNEAR, ZFAR = 0.3, 6.0

_RENDERERS: dict[tuple[str, int, int], Any] = {}


def _import_pyrender(backend: str):
    """Import pyrender with ``PYOPENGL_PLATFORM`` set for ``backend`` (unless the caller set it)."""
    if backend not in BACKENDS:
        raise BenchError(f"unknown render backend {backend!r} (use {' or '.join(BACKENDS)})")
    current = os.environ.get("PYOPENGL_PLATFORM")
    if current is None:
        os.environ["PYOPENGL_PLATFORM"] = backend
    elif current != backend and "OpenGL" in sys.modules:
        raise BenchError(f"render backend {backend!r} requested but OpenGL is already loaded with "
                         f"PYOPENGL_PLATFORM={current}; start a new process")
    elif current != backend:
        os.environ["PYOPENGL_PLATFORM"] = backend
    if "OpenGL" not in sys.modules:
        _preload_llvm_users()
    try:
        import pyrender
        import pyrender.renderer as prr
    except Exception as e:  # missing libOSMesa / libEGL show up as ImportError or OSError
        raise BenchError(f"cannot load pyrender with backend {backend!r} ({type(e).__name__}: {e}); "
                         "for osmesa install libosmesa6") from None
    if not getattr(prr, "_geolrm_single_sample", False):
        # pyrender's framebuffer path (EGL) hard-codes 4x MSAA: colours at edges are blended
        # (which would corrupt the face-id pass) and depth is resolved from one sample. Force
        # single-sample storage so every pixel is the exact pixel-centre sample, as with OSMesa.
        orig = prr.glRenderbufferStorageMultisample

        def _single_sample(target, samples, internalformat, width, height):
            return orig(target, 0, internalformat, width, height)

        prr.glRenderbufferStorageMultisample = _single_sample
        prr._geolrm_single_sample = True
    _fix_program_cache()
    return pyrender


def _context_key() -> Any:
    """The current GL context as a hashable, comparable key: its address (an int).

    PyOpenGL returns a *new* ctypes pointer object for the OSMesa / EGL context on every
    call; those objects hash alike but compare unequal, so a dict keyed by them never hits.
    """
    import ctypes

    import OpenGL.contextdata

    ctx = OpenGL.contextdata.getContext()
    try:
        return ctypes.cast(ctx, ctypes.c_void_p).value or id(ctx)
    except (TypeError, ctypes.ArgumentError):
        return ctx


def _fix_program_cache() -> None:
    """Make pyrender's shader-program cache hit again (it is keyed by the context object).

    Without this, pyrender 0.1.45 compiles (and never frees) a new GL program on every
    ``render`` call under OSMesa: ~0.3-0.8 MB of llvmpipe JIT code leaked per call (tens of
    MB per 40-view object, measured) plus the compile time. The wrapper keeps its own
    cache keyed by the context *address* and the program's files and defines, in front
    of pyrender's; ``clear()`` (renderer teardown) empties both.
    """
    import pyrender.shader_program as sp

    cls = sp.ShaderProgramCache
    if getattr(cls, "_geolrm_keyed_by_address", False):
        return
    orig_get, orig_clear = cls.get_program, cls.clear

    def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
        key = (_context_key(), vertex_shader, fragment_shader, geometry_shader,
               tuple(sorted((defines or {}).items())))
        cache = self.__dict__.setdefault("_geolrm_programs", {})
        program = cache.get(key)
        if program is None:
            program = cache[key] = orig_get(self, vertex_shader, fragment_shader, geometry_shader, defines)
        return program

    def clear(self):
        self.__dict__.pop("_geolrm_programs", None)
        return orig_clear(self)

    cls.get_program, cls.clear = get_program, clear
    cls._geolrm_keyed_by_address = True


def _preload_llvm_users() -> None:
    """Load triton's native library (its own LLVM) before PyOpenGL loads the GL library.

    Mesa (OSMesa, and EGL on llvmpipe) brings its own LLVM; once it is loaded, a later
    first load of ``triton/_C/libtriton.so`` (imported by ``torchvision`` ->
    ``torch._dynamo`` -> ``triton``) segfaults in this environment (LLVM symbol clash;
    reproduced: render, then ``import triton`` -> SIGSEGV). The other order is harmless.
    So the library is ``dlopen``-ed first (RTLD_LOCAL, no Python import: ~0.03 s and
    ~70 MB RSS, instead of importing torchvision: ~3 s and ~600 MB, which numpy-only
    workers such as the occupancy pipeline do not need); a later ``import triton`` reuses
    the loaded library. Without triton there is nothing to protect.
    """
    if "triton" in sys.modules:
        return
    try:
        import ctypes
        import glob
        import importlib.util

        spec = importlib.util.find_spec("triton")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return
        for folder in spec.submodule_search_locations:
            for lib in sorted(glob.glob(os.path.join(folder, "_C", "libtriton*.so"))):
                ctypes.CDLL(lib, mode=getattr(os, "RTLD_LOCAL", 0) | getattr(os, "RTLD_NOW", 0))
                return
    except Exception:  # absent or broken triton: nothing to protect
        pass


def _get_renderer(backend: str, width: int, height: int):
    """One cached OffscreenRenderer per (backend, size): context creation is the slow part."""
    key = (backend, width, height)
    r = _RENDERERS.get(key)
    if r is None:
        pyrender = _import_pyrender(backend)
        try:
            r = pyrender.OffscreenRenderer(width, height)
        except Exception as e:
            raise BenchError(f"cannot create a {backend} offscreen context "
                             f"({type(e).__name__}: {e})") from None
        _RENDERERS[key] = r
    return r


@atexit.register  # before interpreter teardown: a GL context freed later printed PyOpenGL noise
def close_renderers() -> None:
    """Release the cached GL contexts (also at exit, while PyOpenGL can still import its array
    handlers: freed during teardown it printed ``dict_keys([...])`` and ``Unable to import
    OpenGL.arrays...``)."""
    while _RENDERERS:
        _, r = _RENDERERS.popitem()
        try:
            r.delete()
        except Exception:
            pass


def _colour_mesh(pyrender, mesh):
    """pyrender mesh of ``mesh`` (texture or vertex/face colours kept), opaque, double-sided."""
    pm = pyrender.Mesh.from_trimesh(mesh, smooth=False)
    for prim in pm.primitives:
        mat = prim.material
        if mat is None:
            continue
        mat.alphaMode = "OPAQUE"
        mat.doubleSided = True
        if getattr(mat, "baseColorTexture", None) is not None:
            f = np.asarray(mat.baseColorFactor, dtype=np.float32).reshape(-1)
            mat.baseColorFactor = np.array([1.0, 1.0, 1.0, f[3] if f.size == 4 else 1.0], dtype=np.float32)
    return pm


def _id_mesh(pyrender, mesh):
    """pyrender mesh whose face f is drawn in the flat colour encoding f + 1 (24-bit little-endian RGB)."""
    nf = len(mesh.faces)
    if nf >= (1 << 24) - 1:
        raise BenchError(f"mesh has {nf} faces; the normal pass encodes at most 16.7M")
    ids = np.arange(1, nf + 1, dtype=np.uint32)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255, np.full_like(ids, 255)], -1)
    rgb = rgb.astype(np.uint8)
    positions = np.asarray(mesh.vertices, dtype=np.float32)[np.asarray(mesh.faces)].reshape(-1, 3)
    mat = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], alphaMode="OPAQUE",
                                             doubleSided=True)
    prim = pyrender.Primitive(positions=positions, color_0=np.repeat(rgb, 3, axis=0), material=mat,
                              mode=pyrender.constants.GLTF.TRIANGLES)
    return pyrender.Mesh([prim])


def _check_mesh(mesh) -> None:
    import trimesh

    if not isinstance(mesh, trimesh.Trimesh):
        raise BenchError(f"render_views needs a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise BenchError("mesh has no faces")
    if not np.all(np.isfinite(mesh.vertices)):
        raise BenchError("mesh has non-finite vertices")


def render_views(mesh, resolution: int = 512, views: Sequence[int] | None = None,
                 backend: str = "osmesa", fov_deg: float = GOBJAVERSE_FOV_DEG) -> dict[str, Any]:
    """Render ``mesh`` (normalised frame, Z-up) from the GObjaverse views; one scene for all views.

    Args:
        mesh: trimesh.Trimesh with TextureVisuals (image + UVs) or ColorVisuals.
        resolution: image side in pixels (square images).
        views: view indices 0..39 (default all 40).
        backend: ``"osmesa"`` (CPU, default) or ``"egl"`` (GPU or Mesa). pyrender's 4x MSAA
            framebuffer (EGL path) is forced to single-sample here, so both backends give the
            same pixel-centre samples (no anti-aliasing).
        fov_deg: field of view of both axes, degrees (39.6 = GObjaverse).

    Returns:
        dict of layers (see module docstring): ``rgba`` [V,H,W,4] uint8, ``depth`` [V,H,W]
        float32 (z-depth, 0 background), ``normals`` [V,H,W,3] float32 (Blender world frame),
        ``c2w_opencv`` [V,4,4], ``fov`` (x, y) radians, ``views`` list of indices,
        ``resolution`` int, ``renderer`` str.
    """
    _check_mesh(mesh)
    H = W = int(resolution)
    if H <= 0:
        raise BenchError(f"resolution must be positive, got {resolution}")
    pyrender = _import_pyrender(backend)
    idx = list(range(40)) if views is None else [int(v) for v in views]
    c2w_cv = gobjaverse_c2w(idx, convention="opencv")
    c2w_gl = opencv_to_opengl(c2w_cv)
    fov = math.radians(fov_deg)
    f_pix = focal_from_fov(fov) * W

    scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 0.0], ambient_light=[1.0, 1.0, 1.0])
    colour = _colour_mesh(pyrender, mesh)
    ids = _id_mesh(pyrender, mesh)
    scene.add(colour)
    scene.add(ids)
    cam = pyrender.IntrinsicsCamera(fx=f_pix, fy=f_pix, cx=W / 2.0, cy=H / 2.0, znear=ZNEAR, zfar=ZFAR)
    cam_node = scene.add(cam, pose=np.eye(4))
    r = _get_renderer(backend, W, H)
    flags = pyrender.RenderFlags.FLAT | pyrender.RenderFlags.SKIP_CULL_FACES

    V = len(idx)
    rgba = np.empty((V, H, W, 4), np.uint8)
    depth = np.empty((V, H, W), np.float32)
    normals = np.zeros((V, H, W, 3), np.float32)
    face_n = np.asarray(mesh.face_normals, dtype=np.float32)
    id_buf = np.zeros((H, W, 4), np.uint8)  # RGB + zero byte, read as little-endian uint32
    try:
        ids.is_visible = False
        for k in range(V):
            scene.set_pose(cam_node, c2w_gl[k])
            color, d = r.render(scene, flags=flags)
            bg = d <= 0
            out = rgba[k]
            out[..., :3] = color[..., :3]
            out[bg, :3] = 255
            np.multiply(~bg, 255, out=out[..., 3], casting="unsafe")
            depth[k] = d  # pyrender's linearised z-depth, 0 where nothing was drawn
        ids.is_visible, colour.is_visible = True, False
        for k in range(V):
            scene.set_pose(cam_node, c2w_gl[k])
            color, _ = r.render(scene, flags=flags)
            id_buf[..., :3] = color[..., :3]
            fid = id_buf.view("<u4")[..., 0].astype(np.int64) - 1  # [H, W], -1 = background
            hit = (fid >= 0) & (fid < len(face_n)) & (depth[k] > 0)
            normals[k][hit] = face_n[fid[hit]]
    finally:
        # drop the nodes; pyrender frees their GL buffers when it next renders another scene
        for node in list(scene.mesh_nodes):
            scene.remove_node(node)
    return {"rgba": rgba, "depth": depth, "normals": normals, "c2w_opencv": c2w_cv, "fov": (fov, fov),
            "views": idx, "resolution": H, "renderer": f"pyrender-{pyrender.__version__}-{backend}-flat"}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("geolrm-bench", "pyrender", "PyOpenGL", "trimesh", "numpy", "OpenEXR", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_object_views(layers: dict[str, Any], object_dir: str | Path, *, source: str | None = None,
                       to_normalized: np.ndarray | None = None, extra: dict[str, Any] | None = None,
                       exr_compression: str = "rle", png_compress_level: int = 1) -> Path:
    """Write the layers of :func:`render_views` as a GObjaverse object folder, all or nothing.

    Every view gets ``NNNNN.png`` (RGBA), ``NNNNN.json`` (c2w in OpenCV axes, fovs in
    radians) and ``NNNNN_nd.exr`` (Unity-style normals + z-depth); ``metadata.json``
    (resolution, views, renderer, versions, source, normalising transform, ``extra``) is
    written last. EXR compression defaults to RLE (lossless; in ``make bench`` it encoded
    faster than ZIP/PIZ at ~1.6x ZIP's size). Everything goes through
    :func:`geolrm_bench.io.atomic_dir`, so an exception leaves no (half-written)
    ``object_dir`` behind and an existing one intact until the new one is complete.
    """
    object_dir = Path(object_dir)
    for key in ("rgba", "depth", "normals", "c2w_opencv", "fov", "views"):
        if key not in layers:
            raise BenchError(f"render layers lack {key!r}", object_dir)
    rgba, depth, normals = layers["rgba"], layers["depth"], layers["normals"]
    views = list(layers["views"])
    if not (len(rgba) == len(depth) == len(normals) == len(layers["c2w_opencv"]) == len(views)):
        raise BenchError("render layers have different view counts", object_dir)
    meta: dict[str, Any] = {
        "format": "gobjaverse",
        "resolution": int(rgba.shape[1]),
        "views": views,
        "fov_rad": list(layers["fov"]),
        "renderer": layers.get("renderer", "unknown"),
        "lighting": "unlit albedo (pyrender FLAT), white background, alpha mask",
        "camera_convention": "c2w OpenCV axes, Z-up world, looks at origin",
        "normals": "EXR RGB = (-nx, nz, -ny) of Blender-frame face normals; A = z-depth",
        "exr_compression": exr_compression,
        "versions": _versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if source is not None:
        meta["source"] = str(source)
    if to_normalized is not None:
        meta["to_normalized"] = np.asarray(to_normalized, dtype=np.float64).tolist()
    if extra:
        meta.update(extra)
    # replaces only a folder the toolkit wrote (marker, or metadata.json of older versions)
    with atomic_dir(object_dir, markers=(METADATA_NAME,)) as tmp:
        for k, v in enumerate(views):
            write_view(tmp, v, rgba[k], layers["c2w_opencv"][k], normals[k], depth[k],
                       fov=tuple(layers["fov"]), exr_compression=exr_compression,
                       png_compress_level=png_compress_level, atomic=False)
        write_json_atomic(tmp / METADATA_NAME, meta)
    return object_dir


def is_rendered(object_dir: str | Path, resolution: int | None = None,
                views: Sequence[int] | None = None) -> bool:
    """True when ``object_dir`` is a complete render (its ``metadata.json`` exists).

    With ``resolution`` and/or ``views`` it must also have been rendered with those settings
    (as recorded in ``metadata.json``); a render made with other settings is not "done".
    """
    path = Path(object_dir) / METADATA_NAME
    if not path.is_file():
        return False
    if resolution is None and views is None:
        return True
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if resolution is not None and meta.get("resolution") != int(resolution):
        return False
    return views is None or [int(v) for v in meta.get("views", [])] == [int(v) for v in views]


def render_object(asset, out_root: str | Path, resolution: int = 512, backend: str = "osmesa",
                  views: Sequence[int] | None = None, exr_compression: str = "rle") -> Path:
    """Render a :class:`geolrm_bench.datasets.ObjectAsset` into ``out_root/<asset.name>`` atomically.

    The asset's mesh is in the normalised frame; ``metadata.json`` records its source,
    path, ``to_normalized`` (GT frame -> normalised frame) and loader warnings.
    """
    layers = render_views(asset.mesh, resolution=resolution, views=views, backend=backend)
    extra = {"object": asset.name, "path": str(getattr(asset, "path", "")),
             "warnings": list(getattr(asset, "warnings", []) or [])}
    unit = getattr(asset, "unit_m", None)
    if unit is not None:
        extra["unit_m"] = float(unit)
    return write_object_views(layers, Path(out_root) / asset.name, source=getattr(asset, "source", None),
                              to_normalized=getattr(asset, "to_normalized", None), extra=extra,
                              exr_compression=exr_compression)


@dataclass
class RenderSummary:
    """Outcome of :func:`render_collection`: object names per status, failures with one-line reasons."""

    out_root: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"rendered {len(self.written)}, skipped {len(self.skipped)} (already done), "
               f"failed {len(self.failed)} in {self.seconds:.1f} s -> {self.out_root}"]
        out += [f"  FAILED {name}: {why}" for name, why in self.failed]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def render_collection(refs: Iterable, out_root: str | Path, resolution: int = 512, backend: str = "osmesa",
                      skip_existing: bool = True, views: Sequence[int] | None = None,
                      exr_compression: str = "rle", progress: bool = True) -> RenderSummary:
    """Render every ``ObjectRef`` (``ref.name``, ``ref.load()``) into ``out_root/<name>``.

    Resumable: objects whose folder has ``metadata.json`` written with the same resolution and
    views are skipped when ``skip_existing`` (other settings are rendered again); leftovers
    of interrupted atomic writes in ``out_root`` are removed first (so do not point two
    concurrent runs at the same ``out_root``). A failing
    object is recorded with a one-line reason and the run goes on.
    ``out_root/index.json`` (``{"objects": [...]}``: every complete object folder of this
    and earlier runs, plus this run's failures) is written atomically at the end.
    """
    from tqdm import tqdm

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_root)
    summary = RenderSummary(out_root=out_root)
    t0 = time.perf_counter()
    refs = list(refs)
    for ref in tqdm(refs, desc="render", unit="obj", disable=not progress):
        name = ref.name
        wanted_views = list(range(NUM_VIEWS)) if views is None else views
        if skip_existing and is_rendered(out_root / name, resolution=resolution, views=wanted_views):
            summary.skipped.append(name)
            continue
        try:
            # a folder of that name the toolkit did not write (no metadata.json): refused, untouched
            check_replaceable(out_root / name, overwrite=True, markers=(METADATA_NAME,))
            asset = ref.load()
            render_object(asset, out_root, resolution=resolution, backend=backend, views=views,
                          exr_compression=exr_compression)
            summary.written.append(name)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            summary.failed.append((name, one_line(e, limit=None)))
    summary.seconds = time.perf_counter() - t0
    done = sorted(set(summary.written) | set(summary.skipped))
    index_path = out_root / INDEX_NAME
    previous: list[str] = []
    if index_path.is_file():
        try:
            import json

            data = json.loads(index_path.read_text())
            previous = [n for n in (data.get("objects", []) if isinstance(data, dict) else data)
                        if isinstance(n, str) and is_rendered(out_root / n)]
        except (ValueError, OSError):
            previous = []
    write_json_atomic(index_path, {
        "objects": sorted(set(done) | set(previous)),
        "resolution": int(resolution), "backend": backend,
        "failed": [{"name": n, "reason": r} for n, r in summary.failed],
    })
    return summary
