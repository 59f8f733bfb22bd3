"""Standard 3D Gaussian Splatting ``.ply`` files (the INRIA layout that splat viewers read).

Layout written by :func:`save_ply`: one ``vertex`` element, binary little-endian float32 properties
``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 [f_rest_0 ..] opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2
rot_3`` holding the *pre-activation* parameters, as 3DGS training code stores them:

* ``x, y, z``: centres in the model's world frame (normalised object frame, Z-up, world units);
  ``nx, ny, nz`` are zeros (unused by 3DGS, present for compatibility);
* ``f_dc_k = (rgb_k - 0.5) / C0`` with ``C0 = 0.28209479177387814`` (the degree-0 spherical
  harmonic), so a viewer's ``0.5 + C0 * f_dc`` gives the colour back; ``f_rest_*`` (optional
  zeros) are the higher SH bands, which GeoLRM does not predict;
* ``opacity = logit(o)`` (viewers apply a sigmoid);
* ``scale_k = log(s_k)`` with ``s_k`` the standard deviation in world units (viewers apply exp);
* ``rot_0..3`` = unit quaternion (w, x, y, z).

Note that the official GeoLRM ``save_ply`` writes *activated* opacity/scale and raw RGB, which
viewers misread; files from this module follow the standard instead.

:func:`load_ply` reads such files (any float/int property type, either endianness, extra
properties such as ``f_rest_*`` ignored), applies the activations and returns :class:`Gaussians`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geolrm_bench.errors import BenchError
from geolrm_bench.io import write_bytes_atomic
from geolrm_bench.model.gaussians import Gaussians

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))
_OPACITY_EPS = 1e-6  # opacities are clipped to [eps, 1 - eps] before the logit

PLY_PROPERTIES = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_REQUIRED = [p for p in PLY_PROPERTIES if not p.startswith("n")]

_PLY_TYPES = {  # PLY scalar type -> numpy kind+size
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def gaussians_to_ply_array(g: Gaussians, min_opacity: float | None = None, sh_rest: int = 0) -> np.ndarray:
    """Structured float32 array ``[N']`` of the standard layout (pre-activation values).

    Args:
        g: unbatched Gaussians ``[N]`` with activated parameters.
        min_opacity: if given, drop Gaussians with opacity below it (e.g. 0.005 as the official export).
        sh_rest: number of zero ``f_rest_*`` fields to add (0, or 45 for viewers expecting degree-3 SH).
    """
    if g.means.dim() != 2:
        raise BenchError(f"save_ply needs unbatched Gaussians [N], got means {tuple(g.means.shape)}")
    d = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in g.as_dict().items()}
    keep = np.ones(len(d["means"]), dtype=bool)
    if min_opacity is not None:
        keep = d["opacities"] >= min_opacity
    d = {k: v[keep] for k, v in d.items()}
    n = int(keep.sum())
    names = PLY_PROPERTIES[:9] + [f"f_rest_{i}" for i in range(sh_rest)] + PLY_PROPERTIES[9:]
    arr = np.zeros(n, dtype=[(name, "<f4") for name in names])
    for i, axis in enumerate("xyz"):
        arr[axis] = d["means"][:, i]
    for i in range(3):
        arr[f"f_dc_{i}"] = (d["colors"][:, i] - 0.5) / SH_C0
        arr[f"scale_{i}"] = np.log(np.maximum(d["scales"][:, i], 1e-30))
    o = np.clip(d["opacities"], _OPACITY_EPS, 1 - _OPACITY_EPS)
    arr["opacity"] = np.log(o) - np.log1p(-o)
    q = d["quats"] / np.maximum(np.linalg.norm(d["quats"], axis=1, keepdims=True), 1e-12)
    for i in range(4):
        arr[f"rot_{i}"] = q[:, i]
    return arr


def ply_bytes(arr: np.ndarray) -> bytes:
    """Header + binary little-endian body for a structured array of float32 vertex properties."""
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(arr)}"]
    header += [f"property float {name}" for name in arr.dtype.names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def save_ply(path: str | Path, g: Gaussians, min_opacity: float | None = None, sh_rest: int = 0) -> Path:
    """Write ``g`` as a standard 3DGS ``.ply`` atomically; returns the path. See the module docstring."""
    return write_bytes_atomic(path, ply_bytes(gaussians_to_ply_array(g, min_opacity, sh_rest)))


def _parse_header(data: bytes, path: Path) -> tuple[int, str, list[tuple[str, int, list[tuple[str, str]]]]]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise BenchError("not a PLY file (missing 'ply' magic or 'end_header')", path)
    nl = data.find(b"\n", end)
    if nl < 0:
        raise BenchError("truncated PLY header", path)
    try:
        lines = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise BenchError("PLY header is not ASCII", path) from None
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in lines[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format" and len(tok) >= 2:
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3:
            try:
                elements.append((tok[1], int(tok[2]), []))
            except ValueError:
                raise BenchError(f"bad element line {line!r}", path) from None
        elif tok[0] == "property" and elements:
            if tok[1] == "list":
                elements[-1][2].append((tok[-1], "list"))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise BenchError(f"unsupported property line {line!r}", path)
        else:
            raise BenchError(f"unexpected header line {line!r}", path)
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise BenchError(f"unsupported PLY format {fmt!r}", path)
    return nl + 1, fmt, elements


def load_ply(path: str | Path, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Read a standard 3DGS ``.ply`` into activated :class:`Gaussians` ``[N]``.

    Activations: ``opacity = sigmoid``, ``scale = exp``, quaternion normalised (w, x, y, z),
    ``rgb = clip(0.5 + C0 * f_dc, 0, 1)``. Extra properties (normals, ``f_rest_*``, ...) are ignored.
    A missing, truncated or malformed file raises :class:`BenchError` naming it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BenchError("file not found", path) from None
    except IsADirectoryError:
        raise BenchError("is a directory, expected a .ply file", path) from None
    start, fmt, elements = _parse_header(data, path)
    if not elements or elements[0][0] != "vertex":
        raise BenchError("the first PLY element must be 'vertex'", path)
    _, n, props = elements[0]
    if any(kind == "list" for _, kind in props):
        raise BenchError("list properties in the vertex element are not supported", path)
    names = [name for name, _ in props]
    missing = [p for p in _REQUIRED if p not in names]
    if missing:
        raise BenchError(f"not a 3DGS PLY: missing properties {', '.join(missing)}", path)
    if fmt == "ascii":
        try:
            table = np.loadtxt(data[start:].decode("ascii").splitlines()[:n], dtype=np.float64, ndmin=2)
        except (ValueError, UnicodeDecodeError) as e:
            raise BenchError(f"unreadable ASCII PLY body ({e})", path) from None
        if table.shape != (n, len(names)):
            raise BenchError(f"ASCII PLY body has shape {table.shape}, expected ({n}, {len(names)})", path)
        cols = {name: table[:, i] for i, name in enumerate(names)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(name, order + kind) for name, kind in props])
        if len(data) - start < n * dt.itemsize:
            raise BenchError(f"truncated PLY body: {len(data) - start} bytes for {n} vertices of "
                             f"{dt.itemsize} bytes", path)
        rec = np.frombuffer(data, dtype=dt, count=n, offset=start)
        cols = {name: rec[name].astype(np.float64) for name in names}

    means = np.stack([cols["x"], cols["y"], cols["z"]], 1)
    opac = 1.0 / (1.0 + np.exp(-cols["opacity"]))
    scales = np.exp(np.stack([cols[f"scale_{i}"] for i in range(3)], 1))
    quats = np.stack([cols[f"rot_{i}"] for i in range(4)], 1)
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    if not np.all(np.isfinite(means)) or np.any(norm == 0):
        raise BenchError("non-finite positions or zero quaternions", path)
    quats = quats / norm
    colors = np.clip(0.5 + SH_C0 * np.stack([cols[f"f_dc_{i}"] for i in range(3)], 1), 0.0, 1.0)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
    return Gaussians(means=t(means), opacities=t(opac), scales=t(scales), quats=t(quats), colors=t(colors))
