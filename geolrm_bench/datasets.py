"""Dataset readers: one object type for every 3D collection the benchmark reads.

Every reader returns :class:`ObjectAsset` objects whose ``mesh`` is in the **normalised
object frame**: Blender-style Z-up, centred on the centre of its axis-aligned bounding
box and scaled so that its longest side is 1, i.e. inside [-0.5, 0.5]^3. The
ground-truth (GT) frame of an object is the coordinate frame *of its source file*
(the numbers written in the OBJ/STL/...), in the file's own units and axes;
``ObjectAsset.to_normalized`` ([4, 4], homogeneous, column vectors) maps GT-frame
points into the normalised frame and already contains the unit change (HOPE cm,
OmniObject3D mm -> metres) and the axis change (HOPE and OmniObject3D are Y-up:
Z-up via (x, y, z) -> (x, -z, y)). ``ObjectAsset.unit_m`` gives metres per GT unit, so
distances measured in the GT frame convert to metres by multiplying with it.

Kinds (``list_objects(kind, root)``), each a :class:`DatasetReader` subclass registered by
name with :func:`register_dataset` (list, load, detect, unit, axes: a new kind is one class in
one file):

- ``gso``: Google Scanned Objects, one folder or ``.zip`` per object with
  ``meshes/model.obj`` + ``model.mtl`` (``map_Kd texture.png``) and the texture at
  ``materials/textures/texture.png`` (resolved although not beside the MTL). Metres, Z-up.
  Zips are checked entry by entry (no ``..``, absolute paths or links) and extracted
  once into a cache folder (``$GEOLRM_BENCH_CACHE`` or ``<checkout>/.cache``).
- ``scans``: loose scanned-object folders (OBJ + MTL + texture), one sub-folder per
  object, or loose OBJ files. Units of the file, Z-up.
- ``hope``: HOPE scans, same layout as ``scans``, in centimetres (unit_m = 0.01), Y-up
  (upright labels and standing bottles point +Y in the files), turned Z-up like Omni.
- ``omni``: OmniObject3D ``raw_scans/<category>/<id>/Scan/Scan.obj|.mtl|.jpg``,
  millimetres, Y-up.
- ``meshes``: any mesh file (.obj .glb .gltf .ply .stl .off) or a folder of them.
- ``sample``, ``ycb``: folders written by :mod:`geolrm_bench.sample_data`; their
  ``index.json`` gives each object's folder and kind.
- ``synth``: procedural objects of :mod:`geolrm_bench.synth` (``geolrm-bench synth``), one
  folder per object (listed by :func:`geolrm_bench.synth.list_synth`), read as ``scans``.

A missing texture is not an error: the object loads in flat grey and the problem is
appended to ``asset.warnings`` (and issued with :func:`warnings.warn`). A corrupt or
empty mesh, non-finite vertices, an unsafe zip entry or an unreadable file raise
:class:`~geolrm_bench.errors.BenchError` with a one-line message naming the object.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import trimesh
import trimesh.resolvers
import trimesh.visual

from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import atomic_dir, link_outside_root, read_json

__all__ = [
    "DatasetReader",
    "MESH_EXTENSIONS",
    "ObjectAsset",
    "ObjectRef",
    "default_root",
    "detect_dataset",
    "kinds",
    "list_objects",
    "load_mesh_file",
    "normalize_transform",
    "reader",
    "register_dataset",
    "source_transform",
]

_LOG = logging.getLogger(__name__)

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
#: flat colour (RGBA uint8) of objects whose texture is missing or that have no colour
FLAT_GREY = (128, 128, 128, 255)
_COLLISION_RE = re.compile(r"(_col|_coll|_collision|_ch)$", re.IGNORECASE)
_REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- assets
def points_to_gt_frame(points: np.ndarray, to_normalized: np.ndarray) -> np.ndarray:
    """Map normalised-frame points ``[..., 3]`` back to the GT frame (source-file coordinates
    and units) with the inverse of ``to_normalized`` ([4, 4], column vectors); float64."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., 3], got {pts.shape}")
    inv = np.linalg.inv(np.asarray(to_normalized, dtype=np.float64))
    return pts @ inv[:3, :3].T + inv[:3, 3]


def points_to_normalized_frame(points: np.ndarray, to_normalized: np.ndarray) -> np.ndarray:
    """Map GT-frame points ``[..., 3]`` into the normalised object frame with ``to_normalized``
    ([4, 4], column vectors); float64."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., 3], got {pts.shape}")
    m = np.asarray(to_normalized, dtype=np.float64)
    return pts @ m[:3, :3].T + m[:3, 3]


@dataclass
class ObjectAsset:
    """One object, loaded and normalised.

    Attributes:
        name: object name (folder / file stem), unique within its dataset.
        mesh: triangle mesh in the normalised frame (Z-up, inside [-0.5, 0.5]^3, longest
            side 1) with ``TextureVisuals`` (PIL image + UVs) or ``ColorVisuals``.
        source: where it came from, e.g. ``"gso"`` or ``"sample/hope"``.
        path: the file, folder or zip it was read from.
        to_normalized: [4, 4] float64, GT frame (source-file coordinates) -> normalised frame.
        warnings: non-fatal problems (e.g. a missing texture).
        unit_m: metres per GT-frame unit (0.01 for HOPE cm, 0.001 for Omni mm, else 1).
    """

    name: str
    mesh: trimesh.Trimesh
    source: str
    path: Path
    to_normalized: np.ndarray  # [4, 4]
    warnings: list[str] = field(default_factory=list)
    unit_m: float = 1.0

    def to_gt_frame(self, points: np.ndarray) -> np.ndarray:
        """Map normalised-frame points [..., 3] back to the GT frame (source-file coordinates)."""
        return points_to_gt_frame(points, self.to_normalized)

    def to_normalized_frame(self, points: np.ndarray) -> np.ndarray:
        """Map GT-frame points [..., 3] into the normalised frame."""
        return points_to_normalized_frame(points, self.to_normalized)

    def gt_mesh(self) -> trimesh.Trimesh:
        """A copy of the mesh with its vertices in the GT frame (same faces and visuals)."""
        m = self.mesh.copy()
        m.vertices = self.to_gt_frame(self.mesh.vertices)
        return m


@dataclass(frozen=True)
class ObjectRef:
    """A cheap, picklable handle on one object; :meth:`load` reads it.

    ``kind`` is the object's own kind (one of ``OBJECT_KINDS``); ``dataset`` is the
    collection it was listed from (e.g. ``"sample"``), or None when the same as ``kind``.
    """

    name: str
    path: Path
    kind: str
    dataset: str | None = None

    def load(self) -> ObjectAsset:
        source = self.kind if self.dataset in (None, self.kind) else f"{self.dataset}/{self.kind}"
        return _load_object(self.name, Path(self.path), self.kind, source)


# ----------------------------------------------------------------------------- transforms
def source_transform(kind: str) -> np.ndarray:
    """[4, 4] float64: source-file coordinates of ``kind`` -> metric (metres), Z-up frame."""
    return _object_reader(kind).source_transform()


def normalize_transform(vertices: np.ndarray) -> np.ndarray:
    """[4, 4] float64 mapping ``vertices`` [N, 3] onto [-0.5, 0.5]^3 (bbox centre, longest side 1)."""
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0.0:
        raise ValueError("degenerate bounding box")
    m = np.eye(4)
    m[:3, :3] *= 1.0 / extent
    m[:3, 3] = -0.5 * (lo + hi) / extent
    return m


def _normalise(mesh: trimesh.Trimesh, pre: np.ndarray, label: str) -> tuple[trimesh.Trimesh, np.ndarray]:
    """Return (mesh in the normalised frame, to_normalized [4, 4]); ``pre`` = source_transform."""
    used = np.unique(mesh.faces.reshape(-1))
    v_pre = mesh.vertices @ pre[:3, :3].T + pre[:3, 3]
    try:
        norm = normalize_transform(v_pre[used])
    except ValueError:
        raise BenchError("mesh is degenerate (all vertices at one point)", label) from None
    to_normalized = norm @ pre
    # apply in the same order as the matrices, then clip away last-bit rounding
    v = np.clip(v_pre @ norm[:3, :3].T + norm[:3, 3], -0.5, 0.5)
    mesh.vertices = v
    return mesh, to_normalized


# ----------------------------------------------------------------------------- roots
def default_root(kind: str) -> Path:
    """Default folder of dataset ``kind``.

    ``$GEOLRM_BENCH_DATA/<kind>`` if that variable is set, else ``<checkout>/data/<kind>``
    when this package lives in a source checkout, else ``./data/<kind>``.
    """
    reader(kind)  # an unknown kind is a BenchError listing the known ones
    env = os.environ.get("GEOLRM_BENCH_DATA")
    if env:
        return Path(env).expanduser() / kind
    if (_REPO_ROOT / "pyproject.toml").is_file() and (_REPO_ROOT / "geolrm_bench").is_dir():
        return _REPO_ROOT / "data" / kind
    return Path("data") / kind


def _cache_root() -> Path:
    env = os.environ.get("GEOLRM_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    if (_REPO_ROOT / "pyproject.toml").is_file() and (_REPO_ROOT / "geolrm_bench").is_dir():
        return _REPO_ROOT / ".cache" / "geolrm_bench"
    return Path.home() / ".cache" / "geolrm_bench"


# ----------------------------------------------------------------------------- zips
def check_zip_entries(zf: zipfile.ZipFile, label: str | Path) -> None:
    """Raise BenchError if any entry of ``zf`` would escape its folder (``..``, absolute, link)."""
    for info in zf.infolist():
        name = info.filename
        parts = re.split(r"[\\/]+", name)
        mode = info.external_attr >> 16
        if (
            name.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", name)
            or ".." in parts
            or "\x00" in name
            or stat.S_ISLNK(mode)
        ):
            raise BenchError(f"zip entry {name!r} escapes its folder; refusing to extract", label)


#: entries of a GSO zip the reader needs (mesh, material, textures); nothing else is extracted
ZIP_NEEDED_SUFFIXES = (".obj", ".mtl", ".png", ".jpg", ".jpeg", ".tga", ".bmp", ".tif", ".tiff", ".webp")
#: largest entry extracted (declared AND actual bytes), total per zip, and compression ratio
ZIP_MAX_ENTRY_BYTES = 512 << 20
ZIP_MAX_TOTAL_BYTES = 2 << 30
ZIP_MAX_RATIO = 200.0  # uncompressed / compressed, checked for entries above 1 MiB
_ZIP_RATIO_MIN_BYTES = 1 << 20


def _zip_members(zf: zipfile.ZipFile, label: Path) -> list[zipfile.ZipInfo]:
    """The entries the reader needs, each checked against the size and ratio caps."""
    members = []
    for info in zf.infolist():
        if info.is_dir() or not info.filename.lower().endswith(ZIP_NEEDED_SUFFIXES):
            continue
        if info.file_size > ZIP_MAX_ENTRY_BYTES:
            raise BenchError(f"zip entry {info.filename!r} declares {info.file_size} bytes, over the "
                             f"{ZIP_MAX_ENTRY_BYTES}-byte cap; refusing to extract", label)
        if (info.file_size > _ZIP_RATIO_MIN_BYTES
                and info.file_size > ZIP_MAX_RATIO * max(info.compress_size, 1)):
            ratio = info.file_size / max(info.compress_size, 1)
            raise BenchError(f"zip entry {info.filename!r} expands {ratio:.0f}x (cap {ZIP_MAX_RATIO:g}x); "
                             "refusing to extract", label)
        members.append(info)
    return members


def _extract_members(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: Path, label: Path) -> None:
    """Stream ``members`` into ``dest`` with a byte counter (declared sizes can lie)."""
    total = 0
    for info in members:
        target = dest / info.filename.replace("\\", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with zf.open(info) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                n += len(block)
                total += len(block)
                if n > ZIP_MAX_ENTRY_BYTES or n > info.file_size:
                    raise BenchError(f"zip entry {info.filename!r} holds more than its declared "
                                     f"{info.file_size} bytes (or the {ZIP_MAX_ENTRY_BYTES}-byte cap); "
                                     "refusing to extract", label)
                if total > ZIP_MAX_TOTAL_BYTES:
                    raise BenchError(f"zip expands to more than {ZIP_MAX_TOTAL_BYTES} bytes; "
                                     "refusing to extract", label)
                dst.write(block)


def extract_zip(zip_path: Path, cache: Path | None = None) -> Path:
    """Extract the entries of ``zip_path`` the reader needs (:data:`ZIP_NEEDED_SUFFIXES`) once into
    the cache (keyed by path, size, mtime); return the folder.

    Entries over :data:`ZIP_MAX_ENTRY_BYTES` (declared or counted while streaming), a zip over
    :data:`ZIP_MAX_TOTAL_BYTES` in all, or an entry compressed more than :data:`ZIP_MAX_RATIO`
    times are refused with a BenchError naming the zip; nothing is left in the cache then.
    """
    zip_path = Path(zip_path)
    try:
        st = zip_path.stat()
        key = hashlib.sha1(f"{zip_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    except OSError as e:
        raise BenchError(f"unreadable zip ({e.strerror})", zip_path) from None
    final = (cache or _cache_root() / "zips") / f"{zip_path.stem}-{key}"
    if final.is_dir():
        return final
    try:
        with zipfile.ZipFile(zip_path) as zf:
            check_zip_entries(zf, zip_path)
            members = _zip_members(zf, zip_path)
            try:
                with atomic_dir(final, overwrite=False) as tmp:
                    _extract_members(zf, members, tmp, zip_path)
            except BenchError:
                if not final.is_dir():  # another process finished first otherwise
                    raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise BenchError(f"unreadable zip ({e})", zip_path) from None
    return final


# ----------------------------------------------------------------------------- mesh loading
class _SearchResolver(trimesh.resolvers.FilePathResolver):
    """Resolve MTL/texture names in several folders (GSO keeps textures in materials/textures)."""

    def __init__(self, obj_path: Path, extra_dirs: list[Path], search_root: Path | None):
        super().__init__(str(obj_path))
        self.dirs = [obj_path.parent, *extra_dirs]
        self.search_root = search_root
        self.obj_path = obj_path
        self.missing: list[str] = []
        self.substituted: list[str] = []
        self.found: list[str] = []

    def _find(self, name: str) -> Path | None:
        name = name.strip().strip('"')
        rel = Path(name.replace("\\", "/"))
        for d in self.dirs:
            for cand in (d / rel, d / rel.name):
                if cand.is_file():
                    return cand
        if self.search_root is not None and self.search_root.is_dir():
            hits = sorted(self.search_root.rglob(rel.name))
            hits = [h for h in hits if h.is_file()]
            if hits:
                return hits[0]
        return None

    def get(self, name: str) -> bytes:
        path = self._find(name)
        if path is None and name.strip().lower().endswith(".mtl"):
            # a stale ``mtllib`` line (file renamed): use <obj stem>.mtl or the only MTL there
            own = self.obj_path.with_suffix(".mtl")
            mtls = sorted(self.obj_path.parent.glob("*.mtl"))
            path = own if own.is_file() else (mtls[0] if len(mtls) == 1 else None)
            if path is not None:
                self.substituted.append(f"{name} -> {path.name}")
        if path is None:
            self.missing.append(name)
            raise FileNotFoundError(name)
        self.found.append(name)
        return path.read_bytes()


def _has_image(material) -> bool:
    image = getattr(material, "image", None)
    return image is not None or getattr(material, "baseColorTexture", None) is not None


def _flat(mesh: trimesh.Trimesh, rgba=FLAT_GREY) -> None:
    colors = np.tile(np.array(rgba, np.uint8), (len(mesh.faces), 1))
    mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=colors)


def _read_mesh(
    path: Path, label: str, extra_dirs: list[Path] | None = None, search_root: Path | None = None
) -> tuple[trimesh.Trimesh, list[str]]:
    """Load one mesh file as a single Trimesh in its source frame; validate; colour it.

    Returns (mesh, warnings). Raises BenchError for unreadable / empty / non-finite meshes.
    """
    notes: list[str] = []
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise BenchError(f"object {label!r}: unsupported mesh format {ext!r}", path)
    if not path.is_file():
        raise BenchError(f"object {label!r}: mesh file not found", path)
    resolver = _SearchResolver(path, extra_dirs or [], search_root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:
                data = f.read()
            # process=False: trimesh's default processing silently drops NaN vertices
            # and their faces; validate first, then process (merge vertices)
            loaded = trimesh.load(
                io.BytesIO(data), file_type=ext[1:], resolver=resolver, force="mesh", process=False
            )
    except BenchError:
        raise
    except Exception as e:  # trimesh raises many types on corrupt files
        detail = f"{type(e).__name__}: {one_line(e, 200, typed=False)}"
        raise BenchError(f"object {label!r}: unreadable mesh ({detail})", path) from None
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        loaded = trimesh.util.concatenate(geoms) if geoms else None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0 or len(loaded.vertices) == 0:
        raise BenchError(f"object {label!r}: mesh is empty or corrupt (no faces)", path)
    mesh = loaded
    if not np.isfinite(mesh.vertices).all():
        n = int((~np.isfinite(mesh.vertices).all(axis=1)).sum())
        raise BenchError(f"object {label!r}: {n} vertices are NaN or infinite", path)
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise BenchError(f"object {label!r}: face indices out of range", path)
    mesh.process(validate=False)

    if resolver.substituted:
        notes.append(f"{label}: material file {'; '.join(resolver.substituted)} (mtllib name is stale)")
    missing = sorted({m for m in resolver.missing if not m.lower().endswith(".mtl")})
    missing_mtl = sorted({m for m in resolver.missing if m.lower().endswith(".mtl")})
    visual = mesh.visual
    textured = isinstance(visual, trimesh.visual.TextureVisuals)
    has_image = textured and visual.uv is not None and _has_image(visual.material)
    found_tex = sorted({n for n in resolver.found if not n.lower().endswith(".mtl")})
    if missing:
        names = ", ".join(missing)
        notes.append(f"{label}: texture {names} not found (referenced by {path.name}); flat grey")
        _flat(mesh)
    elif missing_mtl:
        notes.append(f"{label}: material file {', '.join(missing_mtl)} not found; flat grey")
        _flat(mesh)
    elif found_tex and not has_image:
        notes.append(f"{label}: texture {', '.join(found_tex)} unreadable or unused; flat grey")
        _flat(mesh)
    elif textured and not has_image:
        # material without an image: use its diffuse colour as a flat face colour
        color = getattr(visual.material, "main_color", None)
        _flat(mesh, FLAT_GREY if color is None else np.asarray(color, np.uint8))
    elif not textured and (not isinstance(visual, trimesh.visual.ColorVisuals) or not visual.defined):
        _flat(mesh)  # no colour at all (e.g. STL): flat grey, not worth a warning
    for n in notes:
        warnings.warn(n, stacklevel=3)
    return mesh, notes


def _visual_obj(folder: Path) -> Path | None:
    """The visual OBJ of an object folder (not a collision hull); the largest one if several."""
    objs = [p for p in folder.rglob("*.obj") if p.is_file() and not _COLLISION_RE.search(p.stem)]
    objs = [p for p in objs if "collision" not in {q.lower() for q in p.relative_to(folder).parts[:-1]}]
    if not objs:
        return None
    preferred = [p for p in objs if p.name == "model.obj" and p.parent.name == "meshes"]
    if preferred:
        return sorted(preferred)[0]
    return sorted(objs, key=lambda p: (-p.stat().st_size, str(p)))[0]


def _make_asset(name: str, path: Path, kind: str, source: str, mesh_path: Path, **kw) -> ObjectAsset:
    mesh, notes = _read_mesh(mesh_path, name, **kw)
    mesh, to_norm = _normalise(mesh, source_transform(kind), f"object {name!r} ({mesh_path})")
    return ObjectAsset(name, mesh, source, path, to_norm, notes, _object_reader(kind).unit_m)


def _load_object(name: str, path: Path, kind: str, source: str) -> ObjectAsset:
    r = _READERS.get(kind)
    if r is None or not r.loadable:
        raise BenchError(f"object {name!r}: unknown kind {kind!r}", path)
    if not path.exists():
        raise BenchError(f"object {name!r}: not found", path)
    return r.load(name, path, source)


def load_mesh_file(path: str | Path, kind: str = "meshes") -> ObjectAsset:
    """Load one mesh file (.obj .glb .gltf .ply .stl .off) as an object named after its stem."""
    path = Path(path)
    return _load_object(path.stem, path, kind, kind)


# ----------------------------------------------------------------------------- listing
def _mesh_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _unique_names(items: list[tuple[str, Path]], root: Path) -> list[tuple[str, Path]]:
    counts: dict[str, int] = {}
    for n, _ in items:
        counts[n] = counts.get(n, 0) + 1
    out = []
    for n, p in items:
        if counts[n] > 1:
            rel = p.relative_to(root).with_suffix("")
            n = "__".join(rel.parts)
        out.append((n, p))
    return out


# ----------------------------------------------------------------------------- the registry of kinds
class DatasetReader:
    """One dataset kind: how to list, load and recognise its objects, and its units and axes.

    A new kind is one subclass registered with :func:`register_dataset` (in any module that
    this one imports; ``synth`` lives in :mod:`geolrm_bench.synth`). Class attributes:

    - ``name``: the kind (set by the decorator); ``unit_m``: metres per source-file unit;
      ``y_up``: source files are Y-up (turned Z-up by (x, y, z) -> (x, -z, y));
    - ``loadable``: objects of this kind are read by :meth:`load` (False for collections such
      as ``sample`` whose :meth:`list_objects` returns refs of other kinds);
    - ``detect_order``: rank in :func:`detect_dataset` (lower is tried first);
    - ``missing_root_hint``: appended to "dataset root not found".
    """

    name: ClassVar[str] = ""
    unit_m: ClassVar[float] = 1.0
    y_up: ClassVar[bool] = False
    loadable: ClassVar[bool] = True
    detect_order: ClassVar[int] = 100
    missing_root_hint: ClassVar[str] = ""

    def source_transform(self) -> np.ndarray:  # [4, 4]
        """Source-file coordinates -> metric (metres), Z-up frame."""
        m = np.eye(4)
        if self.y_up:  # Y-up -> Z-up: (x, y, z) -> (x, -z, y), +90 deg about X
            m[:3, :3] = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
        m[:3, :3] *= self.unit_m
        return m

    def list_objects(self, root: Path) -> list[ObjectRef]:
        """The objects under an existing ``root`` (unsorted; :func:`list_objects` checks and sorts).
        Default: a root file is one mesh; a folder holds one sub-folder or loose OBJ per object."""
        if root.is_file():
            return self.list_file(root)
        refs = []
        for p in sorted(root.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() and _visual_obj(p) is not None:
                refs.append(ObjectRef(p.name, p, self.name))
            elif p.is_file() and self.is_object_file(p):
                refs.append(ObjectRef(p.stem, p, self.name))
        return refs

    def is_object_file(self, path: Path) -> bool:
        """A loose file in the root that is one object (default: a visual OBJ, not a collision hull)."""
        return path.suffix.lower() == ".obj" and not _COLLISION_RE.search(path.stem)

    def list_file(self, root: Path) -> list[ObjectRef]:
        """A dataset root that is one file: a mesh file is one object."""
        if root.suffix.lower() in MESH_EXTENSIONS:
            return [ObjectRef(root.stem, root, self.name)]
        raise BenchError(f"not a {self.name} object or dataset folder", root)

    def load(self, name: str, path: Path, source: str) -> ObjectAsset:
        """Read one object (an existing file or folder) into the normalised frame."""
        if path.is_file():  # a loose mesh file: its textures must sit beside it
            return _make_asset(name, path, self.name, source, path)
        mesh_path = self.mesh_in_folder(name, path)
        if mesh_path is None:
            raise BenchError(f"object {name!r}: no mesh file found", path)
        return _make_asset(name, path, self.name, source, mesh_path, search_root=path)

    def mesh_in_folder(self, name: str, folder: Path) -> Path | None:
        """The mesh file of an object folder (default: its visual OBJ)."""
        return _visual_obj(folder)

    def detect(self, root: Path) -> bool:
        """True when the folder ``root`` looks like a dataset of this kind."""
        return False


_READERS: dict[str, DatasetReader] = {}


def register_dataset(name: str):
    """Class decorator: register a :class:`DatasetReader` subclass as dataset kind ``name``."""
    def deco(cls: type[DatasetReader]) -> type[DatasetReader]:
        if name in _READERS:
            raise ValueError(f"dataset kind {name!r} is registered twice")
        cls.name = name
        _READERS[name] = cls()
        return cls
    return deco


def kinds() -> tuple[str, ...]:
    """The registered dataset kinds, in registration order."""
    return tuple(_READERS)


def reader(kind: str) -> DatasetReader:
    """The reader of dataset ``kind``; BenchError listing the known kinds otherwise."""
    if kind not in _READERS:
        raise BenchError(f"unknown dataset kind {kind!r} (expected one of {', '.join(_READERS)})")
    return _READERS[kind]


def _object_reader(kind: str) -> DatasetReader:
    """The reader of an object kind (one whose objects it loads itself)."""
    r = _READERS.get(kind)
    if r is None or not r.loadable:
        known = ", ".join(k for k, v in _READERS.items() if v.loadable)
        raise BenchError(f"unknown object kind {kind!r} (expected one of {known})")
    return r


@register_dataset("gso")
class GSOReader(DatasetReader):
    """Google Scanned Objects: one folder or ``.zip`` per object, ``meshes/model.obj`` + MTL, the
    texture in ``materials/textures``; metres, Z-up. Zips are extracted once into the cache."""

    detect_order = 40

    def list_objects(self, root: Path) -> list[ObjectRef]:
        if root.is_dir() and (root / "meshes" / "model.obj").is_file():
            return [ObjectRef(root.name, root, self.name)]
        return super().list_objects(root)

    def is_object_file(self, path: Path) -> bool:
        return path.suffix.lower() == ".zip"  # one zipped GSO object

    def list_file(self, root: Path) -> list[ObjectRef]:
        if root.suffix.lower() == ".zip":
            return [ObjectRef(root.stem, root, self.name)]
        return super().list_file(root)

    def load(self, name: str, path: Path, source: str) -> ObjectAsset:
        folder = extract_zip(path) if path.suffix.lower() == ".zip" else path
        if folder.is_file():
            raise BenchError(f"object {name!r}: expected a GSO folder or .zip", path)
        mesh_path = folder / "meshes" / "model.obj"
        if not mesh_path.is_file():
            mesh_path = _visual_obj(folder)
        if mesh_path is None:
            raise BenchError(f"object {name!r}: no meshes/model.obj in GSO object", path)
        tex_dirs = [mesh_path.parent.parent / "materials" / "textures", mesh_path.parent.parent / "materials"]
        return _make_asset(name, path, self.name, source, mesh_path, extra_dirs=tex_dirs, search_root=folder)

    def detect(self, root: Path) -> bool:
        return ((root / "meshes" / "model.obj").is_file()
                or next(root.glob("*/meshes/model.obj"), None) is not None
                or next(root.glob("*.zip"), None) is not None)


def _loose_objs(root: Path) -> list[Path]:
    objs = sorted(root.glob("*/*.obj")) + sorted(root.glob("*.obj"))
    return [p for p in objs if not _COLLISION_RE.search(p.stem)]


@register_dataset("scans")
class ScansReader(DatasetReader):
    """Loose scanned-object folders (OBJ + MTL + texture), one sub-folder per object, or loose OBJ
    files; units of the file, Z-up."""

    detect_order = 60

    def detect(self, root: Path) -> bool:
        return bool(_loose_objs(root))


@register_dataset("hope")
class HopeReader(ScansReader):
    """HOPE scans: the ``scans`` layout in centimetres, Y-up (upright labels and standing bottles
    point +Y in the files); recognised by "centimeter" in an OBJ header."""

    unit_m = 0.01
    y_up = True
    detect_order = 50

    def detect(self, root: Path) -> bool:
        return any("centimeter" in _obj_header(p) for p in _loose_objs(root)[:5])


@register_dataset("omni")
class OmniReader(DatasetReader):
    """OmniObject3D ``raw_scans/<category>/<id>/Scan/Scan.obj|.mtl|.jpg``: millimetres, Y-up."""

    unit_m = 0.001
    y_up = True
    detect_order = 30

    def list_objects(self, root: Path) -> list[ObjectRef]:
        if root.is_file():
            return self.list_file(root)
        base = root / "raw_scans" if (root / "raw_scans").is_dir() else root
        scans = sorted(base.glob("*/*/Scan/Scan.obj")) or sorted(base.glob("*/Scan/Scan.obj"))
        if not scans and (root / "Scan" / "Scan.obj").is_file():
            scans = [root / "Scan" / "Scan.obj"]
        return [ObjectRef(s.parent.parent.name, s.parent.parent, self.name) for s in scans]

    def mesh_in_folder(self, name: str, folder: Path) -> Path | None:
        mesh_path = folder / "Scan" / "Scan.obj"
        return mesh_path if mesh_path.is_file() else _visual_obj(folder)

    def detect(self, root: Path) -> bool:
        return ((root / "raw_scans").is_dir() or root.name == "raw_scans"
                or (root / "Scan" / "Scan.obj").is_file()
                or next(root.glob("*/*/Scan/Scan.obj"), None) is not None)


@register_dataset("meshes")
class MeshesReader(DatasetReader):
    """Any mesh file (.obj .glb .gltf .ply .stl .off) or a folder (tree) of them; a name shared by
    several files becomes their ``__``-joined relative path."""

    detect_order = 70

    def list_objects(self, root: Path) -> list[ObjectRef]:
        if root.is_file():
            return self.list_file(root)
        files = _mesh_files(root)
        return [ObjectRef(n, p, self.name) for n, p in _unique_names([(p.stem, p) for p in files], root)]

    def mesh_in_folder(self, name: str, folder: Path) -> Path | None:
        files = _mesh_files(folder)
        if len(files) > 1:
            raise BenchError(f"object {name!r}: folder holds {len(files)} meshes; pass one file", folder)
        return files[0] if files else None

    def detect(self, root: Path) -> bool:
        return bool(_mesh_files(root))


class _IndexedCollection(DatasetReader):
    """A folder written by :mod:`geolrm_bench.sample_data`: ``index.json`` gives each object's
    folder and kind."""

    loadable = False
    detect_order = 20
    missing_root_hint = " (run `make data-sample`)"

    def list_objects(self, root: Path) -> list[ObjectRef]:
        index = read_json(root / "index.json")
        try:
            return [ObjectRef(o["name"], root / o["path"], o["kind"], self.name) for o in index["objects"]]
        except (KeyError, TypeError) as e:
            raise BenchError(f"malformed index.json ({e!r})", root / "index.json") from None

    def detect(self, root: Path) -> bool:
        if not (root / "index.json").is_file():
            return False
        try:
            index = read_json(root / "index.json")
        except BenchError:
            return False
        return isinstance(index, dict) and index.get("dataset") == self.name


@register_dataset("sample")
class SampleReader(_IndexedCollection):
    """The registry scans installed by ``make data-sample`` (see :mod:`geolrm_bench.sample_data`)."""


@register_dataset("ycb")
class YCBReader(_IndexedCollection):
    """The YCB scans installed by ``make data-sample``."""


def list_objects(kind: str, root: str | Path | None = None) -> list[ObjectRef]:
    """List the objects of dataset ``kind`` under ``root`` (default :func:`default_root`), by name.

    Cheap: nothing is loaded. Raises BenchError when the root is missing or holds no objects.
    """
    r = reader(kind)
    root = default_root(kind) if root is None else Path(root)
    if not root.exists():
        raise BenchError(f"{kind} dataset root not found{r.missing_root_hint}", root)
    refs = r.list_objects(root)
    if not refs:
        raise BenchError(f"no {kind} objects found", root)
    warn_links_outside(root, [ref.path for ref in refs])
    names = [ref.name for ref in refs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BenchError(f"duplicate object names in {kind} dataset: {', '.join(dup[:5])}", root)
    return sorted(refs, key=lambda ref: ref.name)


def warn_links_outside(root: Path, paths: list[Path]) -> list[str]:
    """Log (and return) one warning per object reached through a symbolic link that points outside
    the dataset root: such objects are read (followed) but never written through."""
    if root.is_file():
        return []
    out = []
    for p in paths:
        target = link_outside_root(p, root)
        if target is not None:
            out.append(f"{p} is reached through a symbolic link to {target}, outside the dataset root "
                       f"{root}; reading it there (geolrm-bench never writes through links)")
            _LOG.warning("warning: %s", out[-1])
    return out


def _obj_header(path: Path, n: int = 2048) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace").lower()
    except OSError:
        return ""


def detect_dataset(root: str | Path) -> str:
    """Guess the dataset kind of ``root`` (a folder, a GSO zip or one mesh file): the first
    registered reader, in ``detect_order``, whose :meth:`DatasetReader.detect` accepts it."""
    root = Path(root)
    if not root.exists():
        raise BenchError("dataset root not found", root)
    if root.is_file():
        if root.suffix.lower() == ".zip":
            return "gso"
        if root.suffix.lower() in MESH_EXTENSIONS:
            return "meshes"
        raise BenchError("not a mesh file, GSO zip or dataset folder", root)
    for r in sorted(_READERS.values(), key=lambda r: r.detect_order):
        if r.detect(root):
            return r.name
    raise BenchError("cannot tell the dataset kind (no meshes, GSO objects or index.json found)", root)


# the kinds defined in other modules register themselves on import (they import this module)
from geolrm_bench import synth as _synth  # noqa: E402, F401  (registers "synth")
