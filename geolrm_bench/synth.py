"""Zeroverse-style procedural objects (LRM-Zero, Xie et al. 2024, arXiv 2406.09371) and their reader.

An object is 1-9 random primitives (cube, sphere, cylinder, cone, torus), each with a random
non-uniform scale, rotation and translation, intersecting freely, each with its own random
texture (value noise, stripes, checkers, gradient, or a crop of a photograph shipped with
scikit-image, ``skimage.data``, so nothing is downloaded), plus the three augmentations of
the paper:

- ``height_field``: a primitive's surface displaced along a direction field by smooth 3D
  value noise (finer tessellation for that primitive);
- ``boolean_difference``: a random cutter primitive carved out of the object. No boolean
  engine is installed (trimesh needs ``manifold3d`` or Blender), and the union of freely
  intersecting primitives is not a closed solid anyway, so the difference is *approximated
  face by face*: faces of the object whose centroid lies inside the cutter are removed, and
  the cutter's faces whose centroid lies inside any (undisplaced) primitive of the object are
  added with flipped winding (the cavity walls). The cut edge is therefore jagged at the
  scale of one triangle, not an exact intersection curve; inside tests are analytic per
  primitive and ignore height-field displacement;
- ``wireframe``: a primitive replaced by thin open tubes (hexagonal cylinders) along the
  grid lines of a coarse tessellation of it (a cube becomes its 12 edges).

Frames and units: the object frame is Z-up, unitless, and every written object lies in
[-0.5, 0.5]^3 with its bounding box centred at 0 and longest side 1 (the normalised frame
of :mod:`geolrm_bench.datasets`, so loading it is the identity up to float rounding).

Determinism: :func:`sample_recipe` draws everything from ``numpy.random.default_rng(
SeedSequence([seed, index, attempt]))``; the recipe (a JSON-able dict, stored in
``meta.json``) fully determines the geometry and the textures (:func:`build_object`), so
the same (seed, index) gives the same bytes on disk: floats written with ``%.6f``, PNGs with
fixed compression, JSON with sorted keys. An object that fails the validity checks
(:func:`check_object`: non-empty, finite, inside the box, textured, every side of the
bounding box at least :data:`MIN_EXTENT`) is redrawn with ``attempt + 1``.

On disk, ``<root>/<name>/``: ``model.obj`` (one material, v/vt per vertex), ``model.mtl``
(``map_Kd texture.png``), ``texture.png`` (an atlas, one tile per primitive) and
``meta.json`` (recipe, stats and the sha256 of the three files; written last). The dataset
kind ``synth`` (``--dataset synth --root DIR``) lists such folders (:func:`list_synth`);
they load like loose scans (OBJ + MTL + texture, metres, Z-up).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geolrm_bench.datasets import DatasetReader, ObjectRef, register_dataset
from geolrm_bench.errors import BenchError
from geolrm_bench.io import atomic_dir, read_json

__all__ = [
    "AUGMENTATIONS",
    "GENERATOR",
    "GENERATOR_VERSION",
    "PHOTOS",
    "PRIMITIVES",
    "TEXTURES",
    "SynthConfig",
    "SynthObject",
    "build_object",
    "check_object",
    "generate_object",
    "is_synth_root",
    "list_synth",
    "object_name",
    "sample_recipe",
    "write_object",
]

GENERATOR = "geolrm_bench.synth"
#: bump when the same recipe would give other bytes (a rerun then regenerates everything)
GENERATOR_VERSION = 1
PRIMITIVES = ("cube", "sphere", "cylinder", "cone", "torus")
AUGMENTATIONS = ("height_field", "boolean_difference", "wireframe")
TEXTURES = ("noise", "stripes", "checkers", "gradient", "photo")
#: photographs shipped inside scikit-image (``skimage.data.<name>()`` reads a packaged file;
#: checked offline with scikit-image 0.26). Near-duplicates (chelsea = cat) and masks left out.
PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "colorwheel", "grass", "gravel",
          "hubble_deep_field", "moon", "page", "retina", "rocket", "text", "immunohistochemistry",
          "cell", "clock")
#: shortest allowed side of the normalised bounding box (longest side = 1)
MIN_EXTENT = 0.05
MESH_FILE, MTL_FILE, TEXTURE_FILE, META_FILE = "model.obj", "model.mtl", "texture.png", "meta.json"
#: file that marks a folder as a synth dataset root (written by the pipeline)
DATASET_MARKER = "synth.json"
_TILE_MARGIN = 2  # px between an atlas tile's border and the UVs (no bleeding at tile seams)


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator (all recorded in each object's ``meta.json``)."""

    min_primitives: int = 1
    max_primitives: int = 9
    p_height_field: float = 0.3  # probability that an object gets a height-field primitive
    p_boolean: float = 0.3  # probability of a boolean difference
    p_wireframe: float = 0.25  # probability that an object gets a wireframe primitive
    tile_px: int = 128  # texture tile side per primitive (atlas = ceil(sqrt(n)) tiles a side)
    resolution: int = 24  # angular segments of round primitives (cube: resolution // 3 per edge)
    max_attempts: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_primitives <= self.max_primitives:
            raise BenchError(f"need 1 <= min_primitives <= max_primitives, got "
                             f"{self.min_primitives}, {self.max_primitives}")
        for k in ("p_height_field", "p_boolean", "p_wireframe"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise BenchError(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if self.tile_px < 16 or self.resolution < 6:
            raise BenchError("tile_px must be >= 16 and resolution >= 6")


@dataclass
class SynthObject:
    """A built object in the normalised frame.

    vertices float64 [N, 3] (Z-up, inside [-0.5, 0.5]^3), uv float64 [N, 2] (OBJ convention:
    origin bottom-left of ``texture``), faces int64 [F, 3] (counter-clockwise seen from
    outside), texture uint8 [H, W, 3].
    """

    vertices: np.ndarray
    uv: np.ndarray
    faces: np.ndarray
    texture: np.ndarray
    recipe: dict


def object_name(seed: int, index: int) -> str:
    """Folder name of object ``index`` of seed ``seed`` (seeds can share one root)."""
    return f"s{int(seed)}_{int(index):06d}"


# ----------------------------------------------------------------------------- random helpers
def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _rotation(rng: np.random.Generator) -> list[list[float]]:
    """A uniformly random rotation matrix (from a normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    m = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    return [[float(v) for v in row] for row in m]


def _colour(rng: np.random.Generator) -> list[int]:
    return [int(v) for v in rng.integers(0, 256, size=3)]


def _two_colours(rng: np.random.Generator) -> list[list[int]]:
    """Two colours at least 96 apart (max channel difference), so a pattern stays visible."""
    a = _colour(rng)
    for _ in range(64):
        b = _colour(rng)
        if max(abs(x - y) for x, y in zip(a, b)) >= 96:
            return [a, b]
    return [a, [255 - v for v in a]]


# ----------------------------------------------------------------------------- recipe
def _sample_texture(rng: np.random.Generator) -> dict:
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    t: dict[str, Any] = {"kind": kind}
    if kind == "noise":
        t.update(seed=int(rng.integers(2**31)), cells=int(rng.integers(2, 9)),
                 octaves=int(rng.integers(1, 5)), colours=_two_colours(rng) + [_colour(rng)])
    elif kind == "stripes":
        t.update(angle=float(rng.uniform(0, math.pi)), period=float(rng.uniform(0.05, 0.4)),
                 duty=float(rng.uniform(0.2, 0.8)), colours=_two_colours(rng))
    elif kind == "checkers":
        t.update(cells=int(rng.integers(2, 13)), colours=_two_colours(rng))
    elif kind == "gradient":
        t.update(radial=bool(rng.random() < 0.4), angle=float(rng.uniform(0, 2 * math.pi)),
                 centre=[float(v) for v in rng.uniform(0.2, 0.8, 2)], colours=_two_colours(rng))
    else:  # photo: a random square crop (fractions of the image) and an optional tint
        t.update(name=PHOTOS[int(rng.integers(len(PHOTOS)))], size=float(rng.uniform(0.25, 1.0)),
                 corner=[float(v) for v in rng.random(2)],
                 tint=_colour(rng) if rng.random() < 0.5 else None)
    return t


def _sample_primitive(rng: np.random.Generator) -> dict:
    kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
    p: dict[str, Any] = {
        "kind": kind,
        "scale": [float(v) for v in rng.uniform(0.25, 1.0, 3)],
        "rotation": _rotation(rng),
        "translation": [float(v) for v in rng.uniform(-0.4, 0.4, 3)],
    }
    if kind == "torus":
        p["minor"] = float(rng.uniform(0.06, 0.2))  # tube radius; major = 0.5 - minor (fits the unit cube)
    return p


def sample_recipe(seed: int, index: int, attempt: int = 0, cfg: SynthConfig = SynthConfig()) -> dict:
    """The full, JSON-able recipe of object (``seed``, ``index``), draw number ``attempt``."""
    rng = _rng(seed, index, attempt)
    n = int(rng.integers(cfg.min_primitives, cfg.max_primitives + 1))
    prims = [_sample_primitive(rng) for _ in range(n)]
    for p in prims:
        p["texture"] = _sample_texture(rng)
        p["height_field"] = None
        p["wireframe"] = None
    if rng.random() < cfg.p_height_field:
        p = prims[int(rng.integers(n))]
        p["height_field"] = {"seed": int(rng.integers(2**31)), "cells": int(rng.integers(2, 7)),
                             "amplitude": float(rng.uniform(0.04, 0.12))}  # local units (primitive side 1)
    if rng.random() < cfg.p_wireframe:
        cand = [i for i, p in enumerate(prims) if p["height_field"] is None]
        if cand and (n > 1 or rng.random() < 0.5):
            p = prims[cand[int(rng.integers(len(cand)))]]
            p["wireframe"] = {"segments": int(rng.integers(3, 7)), "radius": float(rng.uniform(0.01, 0.03))}
    boolean = None
    if rng.random() < cfg.p_boolean:
        solid = [i for i, p in enumerate(prims) if p["wireframe"] is None]
        if solid:
            host = prims[solid[int(rng.integers(len(solid)))]]
            cutter = _sample_primitive(rng)
            s = float(rng.uniform(0.3, 0.7))
            cutter["scale"] = [float(s * v) for v in host["scale"]]
            # centre the cutter on a random point of the host's surface, so it always bites
            u = rng.random(2)
            local = _surface_point(host, float(u[0]), float(u[1]))
            cutter["translation"] = [float(v) for v in _to_object(host, local[None])[0]]
            cutter["texture"] = _sample_texture(rng)
            boolean = {"cutter": cutter}
    return {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": int(seed), "index": int(index),
        "attempt": int(attempt), "name": object_name(seed, index), "config": asdict(cfg),
        "primitives": prims, "boolean_difference": boolean,
        "augmentations": sorted(
            ({"height_field"} if any(p["height_field"] for p in prims) else set())
            | ({"wireframe"} if any(p["wireframe"] for p in prims) else set())
            | ({"boolean_difference"} if boolean else set())),
    }


# ----------------------------------------------------------------------------- primitive geometry
def _grid(nu: int, nv: int) -> np.ndarray:
    """Faces [2 nu nv, 3] of a (nu+1) x (nv+1) vertex grid (row-major in u)."""
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    return np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])


def _uv_grid(nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    return u.reshape(-1), v.reshape(-1)


def _patches(kind: str, n: int, minor: float = 0.1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Surface patches of a unit primitive (local frame, inside [-0.5, 0.5]^3).

    Each patch is (points [P, 3], uv [P, 2] in [0, 1], grid (nu, nv) as an int array [2]);
    faces come from :func:`_grid`. ``n`` = angular segments. Shapes: cube side 1; sphere
    radius 0.5; cylinder radius 0.5, height 1 (axis z); cone base radius 0.5 at z = -0.5,
    apex at z = +0.5; torus around z with tube radius ``minor`` and major 0.5 - minor.
    """
    out = []
    tau = 2 * math.pi
    if kind == "cube":
        m = max(1, n // 3)
        u, v = _uv_grid(m, m)
        a, b = u - 0.5, v - 0.5
        for axis in range(3):
            for sign in (-0.5, 0.5):
                p = np.zeros((len(u), 3))
                p[:, axis] = sign
                p[:, (axis + 1) % 3], p[:, (axis + 2) % 3] = a, b
                out.append((p, np.stack([u, v], 1), np.array([m, m])))
        return out
    if kind == "sphere":
        nu, nv = n, max(3, n // 2)
        u, v = _uv_grid(nu, nv)
        th, ph = u * tau, v * math.pi
        p = 0.5 * np.stack([np.sin(ph) * np.cos(th), np.sin(ph) * np.sin(th), np.cos(ph)], 1)
        return [(p, np.stack([u, v], 1), np.array([nu, nv]))]
    if kind == "torus":
        big = 0.5 - minor
        nu, nv = n, max(3, n // 2)
        u, v = _uv_grid(nu, nv)
        th, ph = u * tau, v * tau
        ring = big + minor * np.cos(ph)
        p = np.stack([ring * np.cos(th), ring * np.sin(th), minor * np.sin(ph)], 1)
        return [(p, np.stack([u, v], 1), np.array([nu, nv]))]
    if kind in ("cylinder", "cone"):
        nz, nr = max(2, n // 4), max(2, n // 6)
        u, v = _uv_grid(n, nz)
        r = 0.5 * (1 - v) if kind == "cone" else np.full_like(v, 0.5)
        p = np.stack([r * np.cos(u * tau), r * np.sin(u * tau), v - 0.5], 1)
        out.append((p, np.stack([u, v], 1), np.array([n, nz])))
        caps = (-0.5,) if kind == "cone" else (-0.5, 0.5)
        for z in caps:
            u, v = _uv_grid(n, nr)
            rr = 0.5 * v
            p = np.stack([rr * np.cos(u * tau), rr * np.sin(u * tau), np.full_like(u, z)], 1)
            out.append((p, np.stack([p[:, 0] + 0.5, p[:, 1] + 0.5], 1), np.array([n, nr])))
        return out
    raise BenchError(f"unknown primitive kind {kind!r}")


def _core_direction(kind: str, p: np.ndarray, minor: float = 0.1) -> np.ndarray:
    """Unit direction [P, 3] from the primitive's core (centre; tube circle for a torus) to ``p``.

    A function of position only, so coincident vertices of different patches move together
    under height-field displacement (no cracks at seams).
    """
    if kind == "torus":
        ang = np.arctan2(p[:, 1], p[:, 0])
        core = (0.5 - minor) * np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], 1)
        d = p - core
    else:
        d = p.copy()
    nrm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.where(nrm > 1e-12, d / np.maximum(nrm, 1e-12), np.array([0.0, 0.0, 1.0]))


def _inside_local(kind: str, p: np.ndarray, minor: float = 0.1) -> np.ndarray:
    """bool [P]: points (local frame) inside the unit primitive (analytic, undisplaced)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    r = np.hypot(x, y)
    if kind == "cube":
        return np.abs(p).max(axis=1) <= 0.5
    if kind == "sphere":
        return np.linalg.norm(p, axis=1) <= 0.5
    if kind == "cylinder":
        return (r <= 0.5) & (np.abs(z) <= 0.5)
    if kind == "cone":
        return (np.abs(z) <= 0.5) & (r <= 0.5 * (0.5 - z))
    if kind == "torus":
        return (r - (0.5 - minor)) ** 2 + z**2 <= minor**2
    raise BenchError(f"unknown primitive kind {kind!r}")


def _to_object(prim: dict, local: np.ndarray) -> np.ndarray:
    """Local points [P, 3] -> object frame: x_obj = R (S x_local) + t."""
    rot = np.asarray(prim["rotation"], np.float64)
    return (local * np.asarray(prim["scale"])) @ rot.T + np.asarray(prim["translation"])


def _to_local(prim: dict, pts: np.ndarray) -> np.ndarray:
    rot = np.asarray(prim["rotation"], np.float64)
    return ((pts - np.asarray(prim["translation"])) @ rot) / np.asarray(prim["scale"])


def _surface_point(prim: dict, u: float, v: float) -> np.ndarray:
    """A point [3] (local frame) on the first patch of ``prim`` at grid fractions (u, v)."""
    p, _, (nu, nv) = _patches(prim["kind"], 12, prim.get("minor", 0.1))[0]
    i, j = min(int(u * (nu + 1)), nu), min(int(v * (nv + 1)), nv)
    return p[i * (nv + 1) + j]


def _value_noise_3d(p: np.ndarray, seed: int, cells: int) -> np.ndarray:
    """Smooth noise [P] in [0, 1] at local points [P, 3] in [-0.5, 0.5]^3: random lattice
    values on a (cells + 1)^3 grid, smoothstep-trilinear interpolation."""
    lattice = _rng(seed).random((cells + 2,) * 3)
    g = np.clip((p + 0.5) * cells, 0, cells + 1 - 1e-9)
    i = np.floor(g).astype(np.int64)
    f = g - i
    f = f * f * (3 - 2 * f)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                     * (f[:, 2] if dz else 1 - f[:, 2]))
                out += w * lattice[i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz]
    return out


def _orient_outward(kind: str, pts: np.ndarray, faces: np.ndarray, minor: float) -> np.ndarray:
    """Flip a patch's faces when most of them face the primitive's core (winding = outward)."""
    tri = pts[faces]
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    c = tri.mean(axis=1)
    s = float((nrm * _core_direction(kind, c, minor)).sum())
    return faces[:, ::-1] if s < 0 else faces


def _solid_parts(prim: dict, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points [P, 3] object frame, uv [P, 2] in [0, 1], faces [F, 3]) of a solid primitive."""
    kind, minor = prim["kind"], prim.get("minor", 0.1)
    hf = prim.get("height_field")
    pts_l, uvs, faces = [], [], []
    off = 0
    for p, uv, (nu, nv) in _patches(kind, 2 * n if hf else n, minor):
        f = _grid(int(nu), int(nv))
        tri = p[f]  # drop the zero-area triangles at poles, apexes and cap centres
        f = f[np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) > 1e-12]
        f = _orient_outward(kind, p, f, minor)
        if hf:
            h = _value_noise_3d(p, hf["seed"], hf["cells"]) * 2.0 - 1.0
            p = p + (hf["amplitude"] * h)[:, None] * _core_direction(kind, p, minor)
        pts_l.append(p)
        uvs.append(uv)
        faces.append(f + off)
        off += len(p)
    return _to_object(prim, np.concatenate(pts_l)), np.concatenate(uvs), np.concatenate(faces)


def _tube(a: np.ndarray, b: np.ndarray, radius: float, sides: int = 6) -> tuple[np.ndarray, ...]:
    """Open tubes around segments a [E, 3] -> b [E, 3]: (points [E*2*(sides+1), 3], uv, faces)."""
    d = b - a
    length = np.linalg.norm(d, axis=1, keepdims=True)
    d = d / np.maximum(length, 1e-12)
    helper = np.where(np.abs(d[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(d, e1)
    ang = np.linspace(0, 2 * math.pi, sides + 1)
    ring = np.cos(ang)[None, :, None] * e1[:, None] + np.sin(ang)[None, :, None] * e2[:, None]  # [E, S+1, 3]
    pts = np.stack([a[:, None] + radius * ring, b[:, None] + radius * ring], 2)  # [E, S+1, 2, 3]
    e = len(a)
    u = np.broadcast_to((ang / (2 * math.pi))[None, :, None], (e, sides + 1, 2))
    v = np.broadcast_to(np.array([0.0, 1.0])[None, None, :], (e, sides + 1, 2))
    base = _grid(sides, 1)  # (sides+1) x 2 grid per tube, outward for a CCW ring about d
    faces = (base[None] + (np.arange(e) * 2 * (sides + 1))[:, None, None]).reshape(-1, 3)
    return pts.reshape(-1, 3), np.stack([u, v], -1).reshape(-1, 2), faces


def _wire_parts(prim: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin tubes along the grid lines of a coarse tessellation of ``prim`` (object frame)."""
    wf = prim["wireframe"]
    kind, minor = prim["kind"], prim.get("minor", 0.1)
    seg = 3 if kind == "cube" else int(wf["segments"]) * (2 if kind in ("sphere", "torus") else 1) + 3
    segs = []
    for p, _, (nu, nv) in _patches(kind, seg, minor):
        q = _to_object(prim, p).reshape(int(nu) + 1, int(nv) + 1, 3)
        segs.append(np.stack([q[:-1, :].reshape(-1, 3), q[1:, :].reshape(-1, 3)], 1))
        segs.append(np.stack([q[:, :-1].reshape(-1, 3), q[:, 1:].reshape(-1, 3)], 1))
    s = np.concatenate(segs)
    s = s[np.linalg.norm(s[:, 1] - s[:, 0], axis=1) > 1e-6]
    # one tube per undirected edge (patches share their borders)
    key = np.round(np.sort(s, axis=1).reshape(len(s), 6), 5)
    _, first = np.unique(key, axis=0, return_index=True)
    s = s[np.sort(first)]
    return _tube(s[:, 0], s[:, 1], float(wf["radius"]))


def _inside_any(prims: list[dict], pts: np.ndarray) -> np.ndarray:
    inside = np.zeros(len(pts), bool)
    for p in prims:
        inside |= _inside_local(p["kind"], _to_local(p, pts), p.get("minor", 0.1))
    return inside


# ----------------------------------------------------------------------------- textures
@functools.lru_cache(maxsize=len(PHOTOS))
def _photo(name: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of ``skimage.data.<name>()`` (a file inside the package)."""
    import skimage.data  # heavy import (~0.3 s), only for photo textures

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _mix(colours: list[list[int]], t: np.ndarray) -> np.ndarray:
    """Blend the first two colours by t in [0, 1] -> float [..., 3]."""
    a, b = np.asarray(colours[0], np.float64), np.asarray(colours[1], np.float64)
    return a + t[..., None] * (b - a)


def make_texture(tex: dict, px: int) -> np.ndarray:
    """uint8 [px, px, 3] texture tile of a recipe entry (see :func:`_sample_texture`)."""
    kind = tex["kind"]
    y, x = np.meshgrid((np.arange(px) + 0.5) / px, (np.arange(px) + 0.5) / px, indexing="ij")
    if kind == "noise":
        rng = _rng(tex["seed"])
        total, amp, acc = np.zeros((px, px)), 1.0, 0.0
        for o in range(tex["octaves"]):
            c = tex["cells"] * 2**o
            grid = rng.random((c + 1, c + 1))
            img = Image.fromarray(grid.astype(np.float32), mode="F").resize((px, px), Image.BICUBIC)
            total += amp * np.asarray(img, np.float64)
            acc += amp
            amp *= 0.5
        t = np.clip(total / acc, 0, 1)
        lo, hi = t.min(), t.max()
        t = (t - lo) / (hi - lo) if hi > lo else t
        third = np.asarray(tex["colours"][2], np.float64)
        rgb = _mix(tex["colours"], np.clip(2 * t, 0, 1))
        rgb = np.where((t > 0.5)[..., None], rgb + (2 * t - 1)[..., None] * (third - rgb), rgb)
    elif kind == "stripes":
        s = x * math.cos(tex["angle"]) + y * math.sin(tex["angle"])
        rgb = _mix(tex["colours"], ((s / tex["period"]) % 1.0 < tex["duty"]).astype(np.float64))
    elif kind == "checkers":
        c = tex["cells"]
        rgb = _mix(tex["colours"], ((np.floor(x * c) + np.floor(y * c)) % 2).astype(np.float64))
    elif kind == "gradient":
        if tex["radial"]:
            t = np.hypot(x - tex["centre"][0], y - tex["centre"][1]) / math.sqrt(2)
        else:
            t = (x - 0.5) * math.cos(tex["angle"]) + (y - 0.5) * math.sin(tex["angle"]) + 0.5
        rgb = _mix(tex["colours"], np.clip(t, 0, 1))
    elif kind == "photo":
        img = _photo(tex["name"])
        h, w = img.shape[:2]
        side = max(8, int(round(tex["size"] * min(h, w))))
        r0 = int(round(tex["corner"][1] * (h - side)))
        c0 = int(round(tex["corner"][0] * (w - side)))
        crop = Image.fromarray(img[r0:r0 + side, c0:c0 + side]).resize((px, px), Image.BILINEAR)
        rgb = np.asarray(crop, np.float64)
        if tex.get("tint") is not None:
            rgb = rgb * (0.35 + 0.65 * np.asarray(tex["tint"], np.float64) / 255.0)
    else:
        raise BenchError(f"unknown texture kind {kind!r}")
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- build
def build_object(recipe: dict) -> SynthObject:
    """Geometry and texture atlas of ``recipe``, normalised into [-0.5, 0.5]^3 (pure function)."""
    cfg = SynthConfig(**recipe["config"])
    prims = recipe["primitives"]
    boolean = recipe.get("boolean_difference")
    textures = [p["texture"] for p in prims] + ([boolean["cutter"]["texture"]] if boolean else [])
    ntile = len(textures)
    cols = math.ceil(math.sqrt(ntile))
    rows = math.ceil(ntile / cols)
    tp = cfg.tile_px
    atlas = np.zeros((rows * tp, cols * tp, 3), np.uint8)
    tile_uv = []  # per tile: (u0, v0 in OBJ convention, size)
    for k, tex in enumerate(textures):
        r, c = divmod(k, cols)
        atlas[r * tp:(r + 1) * tp, c * tp:(c + 1) * tp] = make_texture(tex, tp)
        inner = (tp - 2 * _TILE_MARGIN)
        tile_uv.append((np.array([c * tp + _TILE_MARGIN, (rows - 1 - r) * tp + _TILE_MARGIN], np.float64),
                        inner))
    size = np.array([cols * tp, rows * tp], np.float64)

    def to_atlas(uv: np.ndarray, k: int) -> np.ndarray:
        origin, inner = tile_uv[k]
        return (origin + np.clip(uv, 0, 1) * inner) / size

    verts, uvs, faces = [], [], []
    off = 0
    solid = []
    for k, p in enumerate(prims):
        v, uv, f = _wire_parts(p) if p["wireframe"] else _solid_parts(p, cfg.resolution)
        if not p["wireframe"]:
            solid.append(p)
        verts.append(v)
        uvs.append(to_atlas(uv, k))
        faces.append(f + off)
        off += len(v)
    v_all, uv_all, f_all = np.concatenate(verts), np.concatenate(uvs), np.concatenate(faces)
    stats: dict[str, Any] = {}
    if boolean:
        cut = boolean["cutter"]
        keep = ~_inside_any([cut], v_all[f_all].mean(axis=1))
        stats["faces_removed"] = int((~keep).sum())
        f_all = f_all[keep]
        cv, cuv, cf = _solid_parts(cut, cfg.resolution)
        walls = cf[_inside_any(solid, cv[cf].mean(axis=1))][:, ::-1]  # cavity walls face inwards
        stats["wall_faces"] = int(len(walls))
        f_all = np.concatenate([f_all, walls + len(v_all)])
        v_all = np.concatenate([v_all, cv])
        uv_all = np.concatenate([uv_all, to_atlas(cuv, ntile - 1)])
    # drop unused vertices (carving), keep order -> deterministic
    used = np.zeros(len(v_all), bool)
    used[f_all.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    v_all, uv_all, f_all = v_all[used], uv_all[used], remap[f_all]
    if len(v_all):
        lo, hi = v_all.min(axis=0), v_all.max(axis=0)
        extent = float((hi - lo).max())
        if extent > 0 and np.isfinite(extent):
            v_all = np.clip((v_all - 0.5 * (lo + hi)) / extent, -0.5, 0.5)
    return SynthObject(v_all, uv_all, f_all.astype(np.int64), atlas, {**recipe, "build": stats})


def check_object(obj: SynthObject) -> list[str]:
    """Problems that make ``obj`` unusable (empty list = valid)."""
    v, f = obj.vertices, obj.faces
    problems = []
    if len(f) == 0 or len(v) < 3:
        return ["empty mesh"]
    if not np.isfinite(v).all() or not np.isfinite(obj.uv).all():
        problems.append("non-finite vertices or uvs")
        return problems
    if np.abs(v).max() > 0.5 + 1e-9:
        problems.append(f"outside [-0.5, 0.5]^3 (max |x| = {np.abs(v).max():.6f})")
    ext = v.max(axis=0) - v.min(axis=0)
    if ext.min() < MIN_EXTENT or abs(ext.max() - 1.0) > 1e-6:
        problems.append(f"degenerate extents {np.round(ext, 4).tolist()}")
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    if area < 1e-3:
        problems.append(f"surface area {area:.2e} too small")
    if (obj.uv < 0).any() or (obj.uv > 1).any():
        problems.append("uvs outside [0, 1]")
    if obj.texture.ndim != 3 or obj.texture.shape[2] != 3 or float(obj.texture.std()) < 1.0:
        problems.append("texture missing or flat")
    if obj.recipe.get("boolean_difference") and obj.recipe.get("build", {}).get("faces_removed", 0) == 0:
        problems.append("boolean difference removed nothing")
    return problems


# ----------------------------------------------------------------------------- files
def _fmt_rows(prefix: str, a: np.ndarray) -> str:
    row = prefix + " " + " ".join(["%.6f"] * a.shape[1]) + "\n"
    # -0.000000 and 0.000000 are both possible; the same inputs always give the same text
    return (row * len(a)) % tuple(a.reshape(-1).tolist())


def encode_files(obj: SynthObject) -> dict[str, bytes]:
    """The bytes of model.obj, model.mtl and texture.png (deterministic)."""
    name = obj.recipe["name"]
    f = obj.faces + 1
    ff = np.repeat(f, 2, axis=1)
    obj_text = (f"# geolrm-bench synth object {name} ({GENERATOR} v{GENERATOR_VERSION}); "
                f"normalised frame, Z-up\nmtllib {MTL_FILE}\n"
                + _fmt_rows("v", obj.vertices) + _fmt_rows("vt", obj.uv) + f"usemtl {name}\n"
                + ("f %d/%d %d/%d %d/%d\n" * len(f)) % tuple(ff.reshape(-1).tolist()))
    mtl = (f"newmtl {name}\nKa 1.000000 1.000000 1.000000\nKd 1.000000 1.000000 1.000000\n"
           f"Ks 0.000000 0.000000 0.000000\nd 1.000000\nillum 1\nmap_Kd {TEXTURE_FILE}\n")
    buf = io.BytesIO()
    Image.fromarray(obj.texture).save(buf, format="PNG", compress_level=6)
    return {MESH_FILE: obj_text.encode("ascii"), MTL_FILE: mtl.encode("ascii"), TEXTURE_FILE: buf.getvalue()}


def write_object(root: str | Path, obj: SynthObject) -> dict:
    """Write ``obj`` atomically as ``root/<name>/``; returns its meta (also ``meta.json``, written last)."""
    files = encode_files(obj)
    v = obj.vertices
    meta = {
        **obj.recipe,
        "files": {"mesh": MESH_FILE, "material": MTL_FILE, "texture": TEXTURE_FILE},
        "sha256": {k: hashlib.sha256(b).hexdigest() for k, b in files.items()},
        "stats": {"vertices": int(len(v)), "faces": int(len(obj.faces)),
                  "extent": [round(float(x), 6) for x in (v.max(axis=0) - v.min(axis=0))],
                  "texture_px": list(obj.texture.shape[:2])},
    }
    final = Path(root) / obj.recipe["name"]
    with atomic_dir(final) as tmp:
        for rel, data in files.items():
            (tmp / rel).write_bytes(data)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def generate_object(seed: int, index: int, root: str | Path | None = None,
                    cfg: SynthConfig = SynthConfig()) -> tuple[SynthObject, dict | None]:
    """Draw, build and check object (seed, index), redrawing until valid; write it under
    ``root`` when given. Returns (object, meta or None). Raises BenchError when no draw of
    ``cfg.max_attempts`` is valid (never observed with the default config)."""
    last: list[str] = []
    for attempt in range(cfg.max_attempts):
        obj = build_object(sample_recipe(seed, index, attempt, cfg))
        last = check_object(obj)
        if not last:
            return obj, (write_object(root, obj) if root is not None else None)
    raise BenchError(f"synth object {object_name(seed, index)}: no valid draw in {cfg.max_attempts} "
                     f"attempts ({'; '.join(last)})")


def recipe_of(meta: dict) -> dict:
    """The recipe part of a ``meta.json`` (what :func:`build_object` needs)."""
    return {k: v for k, v in meta.items() if k not in ("files", "sha256", "stats", "build")}


def meta_is_valid(folder: str | Path, seed: int | None = None, index: int | None = None) -> dict | None:
    """The object's meta when ``folder/meta.json`` is this generator's current version (and
    the given seed/index) and every file still has its recorded sha256; else None."""
    folder = Path(folder)
    try:
        meta = read_json(folder / META_FILE)
    except BenchError:
        return None
    if not isinstance(meta, dict) or (meta.get("generator"), meta.get("version")) != (GENERATOR,
                                                                                     GENERATOR_VERSION):
        return None
    if (seed is not None and meta.get("seed") != seed) or (index is not None and meta.get("index") != index):
        return None
    sums = meta.get("sha256") or {}
    for rel in (MESH_FILE, MTL_FILE, TEXTURE_FILE):
        p = folder / rel
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sums.get(rel):
            return None
    return meta


# ----------------------------------------------------------------------------- reader (dataset kind)
def is_synth_object(folder: Path) -> bool:
    return (folder / META_FILE).is_file() and (folder / MESH_FILE).is_file()


def is_synth_root(root: str | Path) -> bool:
    """True for a synth dataset root (its marker file) or one synth object folder."""
    root = Path(root)
    return root.is_dir() and ((root / DATASET_MARKER).is_file() or is_synth_object(root))


def list_synth(root: str | Path) -> list[tuple[str, Path]]:
    """(name, folder) of the finished objects under ``root`` (or ``root`` itself), sorted.

    An object counts when its folder holds ``meta.json`` and ``model.obj`` (both written
    in one atomic rename). Hidden folders (temporaries) are skipped.
    """
    root = Path(root)
    if is_synth_object(root):
        return [(root.name, root)]
    if not root.is_dir():
        return []
    return [(p.name, p) for p in sorted(root.iterdir())
            if not p.name.startswith(".") and p.is_dir() and is_synth_object(p)]


@register_dataset("synth")
class SynthReader(DatasetReader):
    """Dataset kind ``synth``: the objects of this module (``geolrm-bench synth``), one folder each
    (OBJ + MTL + texture already in the normalised frame), listed by :func:`list_synth` and
    loaded as ``scans``; recognised by the dataset marker file or an object's own files."""

    loadable = False
    detect_order = 10

    def list_objects(self, root: Path) -> list[ObjectRef]:
        return [ObjectRef(n, p, "scans", self.name) for n, p in list_synth(root)]

    def detect(self, root: Path) -> bool:
        return is_synth_root(root)
