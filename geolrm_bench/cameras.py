"""Cameras: the GObjaverse 40-view layout, camera JSON, OpenCV <-> OpenGL, intrinsics, Plücker rays.

Conventions (stated once here, repeated in each docstring):

- World frame: the normalised object frame, Blender-style **Z-up**, object inside
  [-0.5, 0.5]^3. Every camera of the layout looks at the origin.
- ``c2w`` is a 4x4 camera-to-world matrix whose columns are the camera axes and
  the camera position.

  * **OpenCV** axes (x right, y down, z forward): GObjaverse JSON, our renderer's
    files, depth back-projection.
  * **OpenGL** axes (x right, y up, z backward): the model, Plücker rays,
    rasterizers, :func:`project_points`.
  * ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)`` and back (the matrix is its own inverse).

- Intrinsics are *normalised*: ``K = [[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``
  on the OpenCV pixel grid (u right, v down, pixel centres at +0.5); our views have
  ``cx/W = cy/H = 0.5`` and a 39.6 deg field of view (``fx/W = 1.3889``).

The 40-view layout (:func:`gobjaverse_views`): the real dataset publishes the ranges
but not the exact per-view elevations, so this module fixes a deterministic
schedule, a **linear ramp** over the view index:

- views 0-23 ("orbit"): azimuth ``15 * i`` deg, elevation ``5 + 25 * i / 23`` deg
  (5 .. 30), distance 1.6450;
- view 24: duplicate of view 0;
- view 25: top (elevation +90 deg), view 26: bottom (elevation -90 deg), both at
  azimuth 0 and distance 1.6450;
- views 27-38 ("ring"): azimuth ``30 * k`` deg, elevation ``-5 + 10 * k / 11`` deg
  (-5 .. 5), distance 1.9547, ``k = i - 27``;
- view 39: duplicate of view 27.

Azimuth is measured in the XY plane from +X towards +Y; a camera with elevation
``e`` and azimuth ``a`` sits at ``distance * (cos e cos a, cos e sin a, sin e)``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolrm_bench.errors import BenchError
from geolrm_bench.io import read_json, write_json_atomic

if TYPE_CHECKING:  # torch is imported lazily: numpy-only users (occupancy workers) never load it
    import torch

#: Field of view of every GObjaverse view, degrees (both axes; images are square).
GOBJAVERSE_FOV_DEG = 39.6
#: Distance of views 0-26 from the origin (world units).
ORBIT_DISTANCE = 1.6450
#: Distance of views 27-39 from the origin (world units).
RING_DISTANCE = 1.9547
#: Number of views per object.
NUM_VIEWS = 40

_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def _is_tensor(x: Any) -> bool:
    """True for a torch tensor, without importing torch (a tensor implies torch is loaded)."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(x, torch_mod.Tensor)


@dataclass(frozen=True)
class ViewSpec:
    """One camera of the 40-view layout: looks at the origin of a Z-up world.

    Attributes:
        index: view index 0..39 (folder name ``f"{index:05d}"``).
        elevation_deg: angle above the XY plane, degrees (+90 = straight above).
        azimuth_deg: angle in the XY plane from +X towards +Y, degrees.
        distance: distance of the camera centre from the origin, world units.
    """

    index: int
    elevation_deg: float
    azimuth_deg: float
    distance: float

    @property
    def position(self) -> np.ndarray:  # [3]
        """Camera centre in world coordinates (Z-up)."""
        e, a = math.radians(self.elevation_deg), math.radians(self.azimuth_deg)
        return self.distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])

    def c2w_opencv(self) -> np.ndarray:  # [4, 4]
        """Camera-to-world matrix, OpenCV axes (x right, y down, z forward = towards the origin)."""
        return orbit_c2w(self.elevation_deg, self.azimuth_deg, self.distance, convention="opencv")

    def c2w_opengl(self) -> np.ndarray:  # [4, 4]
        """Camera-to-world matrix, OpenGL axes (x right, y up, z backward = away from the origin)."""
        return orbit_c2w(self.elevation_deg, self.azimuth_deg, self.distance, convention="opengl")


def gobjaverse_views() -> list[ViewSpec]:
    """The 40 views of a GObjaverse object (Z-up world, cameras look at the origin).

    The schedule is the module docstring's linear ramp: orbit 0-23 (elevation
    5..30 deg, azimuth step 15 deg, distance 1.6450), 24 = copy of 0, 25 top,
    26 bottom, ring 27-38 (elevation -5..5 deg, azimuth step 30 deg, distance
    1.9547), 39 = copy of 27. The real dataset's exact elevations are not published.
    """
    views: list[ViewSpec] = []
    for i in range(24):
        views.append(ViewSpec(i, 5.0 + 25.0 * i / 23.0, 15.0 * i, ORBIT_DISTANCE))
    views.append(ViewSpec(24, views[0].elevation_deg, views[0].azimuth_deg, ORBIT_DISTANCE))
    views.append(ViewSpec(25, 90.0, 0.0, ORBIT_DISTANCE))
    views.append(ViewSpec(26, -90.0, 0.0, ORBIT_DISTANCE))
    for k in range(12):
        views.append(ViewSpec(27 + k, -5.0 + 10.0 * k / 11.0, 30.0 * k, RING_DISTANCE))
    views.append(ViewSpec(39, views[27].elevation_deg, views[27].azimuth_deg, RING_DISTANCE))
    return views


def select_views(views: list[int] | None = None) -> list[ViewSpec]:
    """The :class:`ViewSpec` of the given view indices (all 40 when ``views`` is None)."""
    table = gobjaverse_views()
    if views is None:
        return table
    out = []
    for v in views:
        if not 0 <= int(v) < NUM_VIEWS:
            raise BenchError(f"view index {v} is outside 0..{NUM_VIEWS - 1}")
        out.append(table[int(v)])
    return out


def gobjaverse_c2w(views: list[int] | None = None, convention: str = "opencv") -> np.ndarray:  # [V, 4, 4]
    """Stacked camera-to-world matrices of the layout (``opencv`` or ``opengl`` axes, Z-up world)."""
    return np.stack([
        orbit_c2w(s.elevation_deg, s.azimuth_deg, s.distance, convention=convention)
        for s in select_views(views)
    ])


def orbit_c2w(elevation_deg: float, azimuth_deg: float, distance: float,
              convention: str = "opencv") -> np.ndarray:  # [4, 4]
    """c2w of a camera at (elevation, azimuth, distance) looking at the origin of a Z-up world.

    Built from the angles (not a generic look-at) so the poles are well defined:
    the camera's right axis is ``(-sin a, cos a, 0)`` at every elevation, i.e. the
    limit of the Z-up look-at as the elevation approaches +-90 deg. ``convention``
    is ``"opencv"`` (x right, y down, z forward) or ``"opengl"`` (x right, y up,
    z backward).
    """
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    back = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])  # OpenGL +z
    right = np.array([-math.sin(a), math.cos(a), 0.0])
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, distance * back
    return _convert(c2w, convention)


def look_at_c2w(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0),
                convention: str = "opencv") -> np.ndarray:  # [4, 4]
    """Generic look-at camera-to-world matrix (world units, any world ``up``; default Z-up).

    The camera sits at ``eye`` and its forward axis points at ``target``. When the
    view direction is parallel to ``up`` another up vector (world +Y, then +X) is
    used. ``convention`` selects OpenCV (x right, y down, z forward) or OpenGL
    (x right, y up, z backward) axes.
    """
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    back = eye - target
    n = np.linalg.norm(back)
    if n == 0:
        raise BenchError("look-at camera: eye and target coincide")
    back /= n
    right = None
    for u in (np.asarray(up, dtype=np.float64), np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])):
        r = np.cross(u, back)
        if np.linalg.norm(r) > 1e-9:
            right = r / np.linalg.norm(r)
            break
    assert right is not None
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, eye
    return _convert(c2w, convention)


def _convert(c2w_gl: np.ndarray, convention: str) -> np.ndarray:
    if convention == "opengl":
        return c2w_gl
    if convention == "opencv":
        return opengl_to_opencv(c2w_gl)
    raise BenchError(f"unknown camera convention {convention!r} (use 'opencv' or 'opengl')")


def opencv_to_opengl(c2w):  # [..., 4, 4] -> [..., 4, 4]
    """OpenCV-axes c2w (right, down, forward) -> OpenGL axes (right, up, backward).

    ``c2w @ diag(1, -1, -1, 1)``: flips the camera's y and z columns; the camera
    position is unchanged. Works on numpy arrays and torch tensors, any batch shape.
    """
    if _is_tensor(c2w):
        import torch

        flip = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device)
        return c2w * flip
    c2w = np.asarray(c2w)
    return c2w * _FLIP_YZ.diagonal().astype(c2w.dtype if c2w.dtype.kind == "f" else np.float64)


def opengl_to_opencv(c2w):  # [..., 4, 4] -> [..., 4, 4]
    """OpenGL-axes c2w -> OpenCV axes: the same ``c2w @ diag(1, -1, -1, 1)`` (its own inverse)."""
    return opencv_to_opengl(c2w)


def focal_from_fov(fov_rad: float) -> float:
    """Normalised focal length ``f / size = 0.5 / tan(fov / 2)`` (fov in radians)."""
    return 0.5 / math.tan(fov_rad / 2.0)


def fov_from_focal(focal_norm: float) -> float:
    """Field of view in radians from a normalised focal length ``f / size``."""
    return 2.0 * math.atan(0.5 / focal_norm)


def intrinsics_from_fov(x_fov: float | None = None, y_fov: float | None = None,
                        fov_deg: float = GOBJAVERSE_FOV_DEG) -> np.ndarray:  # [3, 3]
    """Normalised intrinsics ``[[fx/W, 0, 0.5], [0, fy/H, 0.5], [0, 0, 1]]``.

    ``x_fov`` / ``y_fov`` are full fields of view in **radians**; a missing one
    copies the other; both missing means ``fov_deg`` degrees (39.6 = GObjaverse,
    ``fx/W = 1.3889``). Principal point at the image centre, OpenCV pixel grid.
    """
    if x_fov is None and y_fov is None:
        x_fov = y_fov = math.radians(fov_deg)
    elif x_fov is None:
        x_fov = y_fov
    elif y_fov is None:
        y_fov = x_fov
    return np.array([[focal_from_fov(x_fov), 0.0, 0.5], [0.0, focal_from_fov(y_fov), 0.5], [0.0, 0.0, 1.0]])


def intrinsics_to_pixels(K_norm, height: int, width: int):  # [..., 3, 3] -> [..., 3, 3]
    """Normalised intrinsics -> pixel intrinsics (row 0 times W, row 1 times H). numpy or torch."""
    scale = [float(width), float(height), 1.0]
    if _is_tensor(K_norm):
        import torch

        return K_norm * torch.tensor(scale, dtype=K_norm.dtype, device=K_norm.device)[:, None]
    return np.asarray(K_norm, dtype=np.float64) * np.array(scale)[:, None]


def intrinsics_to_normalized(K_pix, height: int, width: int):  # [..., 3, 3] -> [..., 3, 3]
    """Pixel intrinsics -> normalised (row 0 over W, row 1 over H). numpy or torch."""
    scale = [1.0 / width, 1.0 / height, 1.0]
    if _is_tensor(K_pix):
        import torch

        return K_pix * torch.tensor(scale, dtype=K_pix.dtype, device=K_pix.device)[:, None]
    return np.asarray(K_pix, dtype=np.float64) * np.array(scale)[:, None]


# ----------------------------------------------------------------------------- camera JSON

@dataclass
class CameraJSON:
    """Contents of a GObjaverse view JSON.

    Attributes:
        c2w_opencv: [4, 4] camera-to-world, OpenCV axes, Z-up world (from keys
            ``x``, ``y``, ``z`` = axis columns and ``origin`` = camera centre).
        x_fov, y_fov: full fields of view, radians.
        extra: any other keys of the file (kept, not interpreted).
    """

    c2w_opencv: np.ndarray  # [4, 4]
    x_fov: float
    y_fov: float
    extra: dict[str, Any]

    @property
    def intrinsics(self) -> np.ndarray:  # [3, 3]
        """Normalised intrinsics from the fields of view (principal point at the centre)."""
        return intrinsics_from_fov(self.x_fov, self.y_fov)

    @property
    def distance(self) -> float:
        """Distance of the camera centre from the world origin, world units."""
        return float(np.linalg.norm(self.c2w_opencv[:3, 3]))


def camera_to_json_dict(c2w_opencv: np.ndarray, x_fov: float, y_fov: float | None = None,
                        **extra: Any) -> dict[str, Any]:
    """The JSON dict of one view: ``x``, ``y``, ``z`` (OpenCV axis columns), ``origin``, fovs (radians)."""
    c2w = np.asarray(c2w_opencv, dtype=np.float64)
    d = {
        "x": c2w[:3, 0].tolist(), "y": c2w[:3, 1].tolist(), "z": c2w[:3, 2].tolist(),
        "origin": c2w[:3, 3].tolist(),
        "x_fov": float(x_fov), "y_fov": float(x_fov if y_fov is None else y_fov),
    }
    d.update(extra)
    return d


def write_camera_json(path: str | Path, c2w_opencv: np.ndarray, x_fov: float, y_fov: float | None = None,
                      **extra: Any) -> Path:
    """Atomically write a GObjaverse camera JSON (c2w in OpenCV axes, fovs in radians)."""
    return write_json_atomic(path, camera_to_json_dict(c2w_opencv, x_fov, y_fov, **extra))


def camera_from_json_dict(d: Any, source: str | Path = "<camera json>") -> CameraJSON:
    """Parse a GObjaverse camera dict; a missing or malformed key raises BenchError naming ``source``."""
    if not isinstance(d, dict):
        raise BenchError("camera JSON is not an object", source)
    c2w = np.eye(4)
    try:
        for col, key in enumerate(("x", "y", "z", "origin")):
            v = np.asarray(d[key], dtype=np.float64)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise ValueError(f"key {key!r} must be 3 finite numbers")
            c2w[:3, col] = v
        x_fov = float(d["x_fov"])
        y_fov = float(d.get("y_fov", x_fov))
    except KeyError as e:
        raise BenchError(f"camera JSON lacks key {e.args[0]!r}", source) from None
    except (TypeError, ValueError) as e:
        raise BenchError(f"malformed camera JSON ({e})", source) from None
    if not (0 < x_fov < math.pi and 0 < y_fov < math.pi):
        raise BenchError(f"camera JSON field of view out of range (x_fov={x_fov}, y_fov={y_fov} rad)", source)
    extra = {k: v for k, v in d.items() if k not in ("x", "y", "z", "origin", "x_fov", "y_fov")}
    return CameraJSON(c2w, x_fov, y_fov, extra)


def read_camera_json(path: str | Path) -> CameraJSON:
    """Read a GObjaverse view JSON (extra keys tolerated); unreadable/malformed -> BenchError naming it."""
    return camera_from_json_dict(read_json(path), path)


# ----------------------------------------------------------------------------- rays and projection

def _as_tensor(x, dtype=None) -> torch.Tensor:
    import torch

    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float32)


def plucker_rays(c2w_opengl, K_norm, height: int, width: int, compat: bool = False,
                 normalize: bool = False) -> torch.Tensor:  # [...,4,4], [...,3,3] -> [..., 6, H, W]
    """Plücker ray embedding ``[d, o x d]`` per pixel (the model's input rays).

    Args:
        c2w_opengl: [..., 4, 4] camera-to-world, OpenGL axes (x right, y up, z back), Z-up world.
        K_norm: [..., 3, 3] normalised intrinsics.
        height, width: image size in pixels.
        compat: False (paper maths): the full ``K`` (fx, fy, cx, cy). True (official GeoLRM
            code): only ``K[0, 0] = fx/W`` is used, the focal ``fx * W`` pixels serves both
            axes and the principal point is ``(W/2, H/2)``. Both agree for fx = fy, square
            images and a centred principal point.
        normalize: False (official): ``d`` is unnormalised with camera-space z = -1;
            True: ``d`` has unit length (the moment is computed from the unit ``d``).

    Returns:
        [..., 6, H, W] tensor (dtype of the inputs, float32 for numpy input): channels
        ``d_x, d_y, d_z`` (world direction) then ``m = o x d`` (o = camera centre).
        Pixel (row i, col j) uses its centre (j + 0.5, i + 0.5):
        ``d_cam = ((j + 0.5 - cx W) / (fx W), -(i + 0.5 - cy H) / (fy H), -1)``, then ``d = R d_cam``.
    """
    import torch

    c2w = _as_tensor(c2w_opengl)
    K = _as_tensor(K_norm, c2w.dtype).to(c2w.device)
    # rays in the input dtype also under autocast: a bf16 einsum beside the fp32 centres made
    # torch.cross fail on dtypes, and bf16 directions would be off by ~4e-3
    with torch.autocast(device_type=c2w.device.type, enabled=False):
        return _plucker_rays(c2w, K, height, width, compat, normalize)


def _plucker_rays(c2w, K, height: int, width: int, compat: bool, normalize: bool):
    import torch

    dev, dt = c2w.device, c2w.dtype
    jj = torch.arange(width, device=dev, dtype=dt) + 0.5  # [W]
    ii = torch.arange(height, device=dev, dtype=dt) + 0.5  # [H]
    fx = K[..., 0, 0] * width  # [...]
    if compat:
        fy, cx, cy = fx, torch.full_like(fx, width / 2), torch.full_like(fx, height / 2)
    else:
        fy, cx, cy = K[..., 1, 1] * height, K[..., 0, 2] * width, K[..., 1, 2] * height
    x = (jj - cx[..., None, None]) / fx[..., None, None]  # [..., 1, W]
    y = -(ii[:, None] - cy[..., None, None]) / fy[..., None, None]  # [..., H, 1]
    d_cam = torch.stack(torch.broadcast_tensors(x, y, -torch.ones_like(x)), -1)  # [..., H, W, 3]
    d = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], d_cam)  # [..., H, W, 3]
    if normalize:
        d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[..., None, None, :3, 3].expand_as(d)
    m = torch.cross(o, d, dim=-1)
    return torch.cat([d, m], -1).movedim(-1, -3).contiguous()  # [..., 6, H, W]


def project_points(points_world, c2w_opengl, K_norm, return_depth: bool = False, compat: bool = False):
    """Project world points to normalised OpenCV image coordinates ``uv`` in [0, 1] (inside the image).

    Args:
        points_world: [..., N, 3] points, Z-up world (batch dims broadcast against the cameras').
        c2w_opengl: [..., 4, 4] camera-to-world, OpenGL axes (camera looks along -z).
        K_norm: [..., 3, 3] normalised intrinsics (fx/W, fy/H, cx/W, cy/H).
        return_depth: also return the OpenCV z-depth ``-z_cam`` ([..., N], > 0 in front).
        compat: False (paper maths): camera point ``(x_c, y_c, z_c) = inv(c2w) [p, 1]``,
            ``u = cx + fx * x_c / (-z_c)``, ``v = cy - fy * y_c / (-z_c)``. True (official GeoLRM
            code): ``(x~, y~, z~) = K inv(c2w)[:3] [p, 1]``, ``uv = (x~/z~, y~/z~)``, ``u <- 1 - u``;
            identical when cx = 0.5. No masking of points behind the camera in either.

    Returns:
        uv [..., N, 2]: ``u`` right, ``v`` down, (0, 0) = top-left corner of the image. Pixel
        ``(col, row)`` is ``(u * W, v * H)``, pixel centres at +0.5. numpy in -> numpy out
        (float64); a tensor keeps its dtype.
    """
    import torch

    is_np = not isinstance(points_world, torch.Tensor)
    p = _as_tensor(points_world, torch.float64 if is_np else None)
    c2w = _as_tensor(c2w_opengl, p.dtype).to(p.device)
    K = _as_tensor(K_norm, p.dtype).to(p.device)
    # projections in the input dtype also under AMP: bf16 would move uv by ~1e-2 (pixels at 448 px)
    with torch.autocast(device_type=p.device.type, enabled=False):
        return _project_points(p, c2w, K, return_depth, compat, is_np)


def _project_points(p, c2w, K, return_depth: bool, compat: bool, is_np: bool):
    import torch

    w2c = torch.linalg.inv(c2w)  # [..., 4, 4]
    hom = torch.cat([p, torch.ones_like(p[..., :1])], -1)  # [..., N, 4]
    if compat:
        q = torch.einsum("...ij,...nj->...ni", K @ w2c[..., :3, :], hom)  # [..., N, 3]
        uv = q[..., :2] / q[..., 2:3]
        uv = torch.stack([1.0 - uv[..., 0], uv[..., 1]], -1)
        z = -q[..., 2]
    else:
        pc = torch.einsum("...ij,...nj->...ni", w2c[..., :3, :], hom)  # [..., N, 3]
        z = -pc[..., 2]
        u = K[..., 0, 2, None] + K[..., 0, 0, None] * pc[..., 0] / z
        v = K[..., 1, 2, None] - K[..., 1, 1, None] * pc[..., 1] / z
        uv = torch.stack([u, v], -1)
    if is_np:
        return (uv.numpy(), z.numpy()) if return_depth else uv.numpy()
    return (uv, z) if return_depth else uv
