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
COMPRESSIONS = ("none", "rle", "zips", "zip", "piz")
DEFAULT_COMPRESSION = "rle"


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
    """Best wall-clock seconds and the CPU seconds (all threads of this process) of that run."""
    best, cpu, out = float("inf"), float("nan"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if t < best:
            best, cpu = t, c
    return (best, cpu), out


def main() -> None:
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    from tabulate import tabulate

    from geolrm_bench.rendering import render_views, write_object_views

    sphere, box = _object()
    rows = []
    render_views(box, resolution=64, views=[0])  # create the GL context outside the timings
    t_sphere, layers = _timed(lambda: render_views(sphere, resolution=RESOLUTION))
    t_box, _ = _timed(lambda: render_views(box, resolution=RESOLUTION))
    rows.append(["render 40 views, vertex colours (20k faces)", *_fmt(t_sphere), "", ""])
    rows.append(["render 40 views, textured box", *_fmt(t_box), "", ""])
    write_s = {}
    with tempfile.TemporaryDirectory(prefix="geolrm-bench-render-") as tmp:
        for comp in COMPRESSIONS:
            dst = Path(tmp) / f"obj_{comp}"
            t, _ = _timed(lambda dst=dst, comp=comp: write_object_views(layers, dst, exr_compression=comp))
            size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
            exr = sum(p.stat().st_size for p in dst.rglob("*_nd.exr"))
            write_s[comp] = t
            rows.append([f"encode + write 40 views, EXR {comp}", *_fmt(t), f"{size / 2**20:.1f}",
                         f"{exr / 2**20:.1f}"])
    w = write_s[DEFAULT_COMPRESSION]
    total = (t_sphere[0] + w[0], t_sphere[1] + w[1])
    rows.append([f"total (vertex-coloured object, EXR {DEFAULT_COMPRESSION})", *_fmt(total), "", ""])
    print(f"one object, {RESOLUTION}x{RESOLUTION}, 40 views, OSMesa, best of 2; goal total < 2 s on one core "
          f"(CPU s = all threads of this process; load average now {os.getloadavg()[0]:.1f})")
    print(tabulate(rows, headers=["step", "wall s", "CPU s", "folder MiB", "EXR MiB"], tablefmt="github"))


def _fmt(t: tuple[float, float]) -> list[str]:
    return [f"{t[0]:.2f}", f"{t[1]:.2f}"]


if __name__ == "__main__":
    main()
