"""Benchmark of the renderer: one object, 512x512, 40 views (goal: total < 2 s on one core).

Rows: rendering (colour + face-id passes, OSMesa), then writing the object folder
(PNG + JSON + ``_nd.exr`` per view, atomic) for several EXR compressions, and the
total with the default compression (zip). The object is a vertex-coloured icosphere
(20,480 faces) plus a 256x256 textured box, so both colour paths are exercised.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

RESOLUTION = 512
COMPRESSIONS = ("none", "zips", "zip", "piz")
DEFAULT_COMPRESSION = "zip"


def _object():
    import trimesh
    from PIL import Image

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    rng = np.random.default_rng(0)
    vc = np.concatenate([rng.integers(0, 256, (len(sphere.vertices), 3)),
                         np.full((len(sphere.vertices), 1), 255)], 1).astype(np.uint8)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=vc)
    box = trimesh.creation.box(extents=(0.9, 0.9, 0.2))
    box.apply_translation((0, 0, -0.4))
    img = Image.fromarray(rng.integers(0, 256, (256, 256, 3)).astype(np.uint8))
    uv = (box.vertices[:, :2] + 0.45) / 0.9
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=img)
    return sphere, box


def _timed(fn, repeats: int = 2):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    from tabulate import tabulate

    from geolrm_bench.rendering import render_views, write_object_views

    sphere, box = _object()
    rows = []
    render_views(box, resolution=64, views=[0])  # create the GL context outside the timings
    t_sphere, layers = _timed(lambda: render_views(sphere, resolution=RESOLUTION))
    t_box, _ = _timed(lambda: render_views(box, resolution=RESOLUTION))
    rows.append(["render 40 views, vertex colours (20k faces)", f"{t_sphere:.2f}", "", ""])
    rows.append(["render 40 views, textured box", f"{t_box:.2f}", "", ""])
    write_s = {}
    with tempfile.TemporaryDirectory(prefix="geolrm-bench-render-") as tmp:
        for comp in COMPRESSIONS:
            dst = Path(tmp) / f"obj_{comp}"
            t, _ = _timed(lambda dst=dst, comp=comp: write_object_views(layers, dst, exr_compression=comp))
            size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
            exr = sum(p.stat().st_size for p in dst.rglob("*_nd.exr"))
            write_s[comp] = t
            rows.append([f"encode + write 40 views, EXR {comp}", f"{t:.2f}", f"{size / 2**20:.1f}",
                         f"{exr / 2**20:.1f}"])
    total = t_sphere + write_s[DEFAULT_COMPRESSION]
    rows.append([f"total (vertex-coloured object, EXR {DEFAULT_COMPRESSION})", f"{total:.2f}", "", ""])
    print(f"one object, {RESOLUTION}x{RESOLUTION}, 40 views, OSMesa, best of 2; goal total < 2 s on one core")
    print(tabulate(rows, headers=["step", "seconds", "folder MiB", "EXR MiB"], tablefmt="github"))


if __name__ == "__main__":
    main()
