"""Shared analytic-shape fixtures: a unit-ish sphere and a box, made with trimesh, in the normalised frame.

The shapes are centred at the origin of the Z-up world and fit in [-0.5, 0.5]^3, so the
GObjaverse cameras (distance 1.645 / 1.9547, fov 39.6 deg) see them whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

#: Radius of the sphere fixture, world units.
SPHERE_RADIUS = 0.4
#: Full side lengths of the box fixture along x, y, z, world units.
BOX_EXTENTS = (0.8, 0.6, 0.4)


@pytest.fixture
def sphere_mesh() -> trimesh.Trimesh:
    """Icosphere of radius ``SPHERE_RADIUS`` at the origin (5 subdivisions: chord error ~1e-4 r)."""
    return trimesh.creation.icosphere(subdivisions=5, radius=SPHERE_RADIUS)


def make_box_mesh() -> trimesh.Trimesh:
    """Axis-aligned box with ``BOX_EXTENTS`` centred at the origin, one solid colour per face pair.

    A plain function (``from conftest import make_box_mesh``) for module-scoped fixtures and
    helpers; tests take the ``box_mesh`` fixture.
    """
    box = trimesh.creation.box(extents=BOX_EXTENTS)
    n = box.face_normals
    colors = np.zeros((len(box.faces), 4), dtype=np.uint8)
    colors[:, 3] = 255
    axis = np.abs(n).argmax(axis=1)
    colors[axis == 0, 0] = 220  # +-x faces red
    colors[axis == 1, 1] = 200  # +-y faces green
    colors[axis == 2, 2] = 180  # +-z faces blue
    box.visual = trimesh.visual.ColorVisuals(box, face_colors=colors)
    return box


@pytest.fixture
def box_mesh() -> trimesh.Trimesh:
    """The box of :func:`make_box_mesh`."""
    return make_box_mesh()


@pytest.fixture
def one_thread():
    """Run the test with one torch intra-op thread (restored afterwards).

    On the project's two shared cores one thread is much faster than two contending ones for
    the small tensors of the rasterizer and tiny-model tests.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rendering_available() -> bool:
    """Whether the offscreen renderer works here (one 8 px view of a box)."""
    try:
        from geolrm_bench import rendering  # pyrender/OpenGL: only for tests that render

        rendering.render_views(trimesh.creation.box(extents=(1, 1, 1)), resolution=8, views=[0])
        return True
    except Exception:  # noqa: BLE001 - any failure means: cannot render here
        return False


#: ``@needs_renderer``: skip a test when no offscreen renderer is available
needs_renderer = pytest.mark.skipif(not rendering_available(), reason="offscreen renderer unavailable")


def make_occupancy_data(root: Path) -> Path:
    """``occupancy-gt`` output (local, no Ray) for a sphere and a box at 64 px, R_gt = 128, under
    ``root/train-data``: the smallest training data the trainer accepts (as in test_training.py).
    Skips the test when no offscreen renderer is available."""
    from geolrm_bench.pipelines import occupancy_gt as pipe  # Ray/pyrender: only for tests that train

    root = Path(root)
    meshes = root / "meshes"
    meshes.mkdir(parents=True, exist_ok=True)
    trimesh.creation.icosphere(subdivisions=3, radius=2.0).export(meshes / "sphere.ply")
    trimesh.creation.box(extents=(3.0, 2.0, 1.0)).export(meshes / "box.stl")
    out = root / "train-data"
    try:
        res = pipe.run_occupancy_gt(pipe.OccupancyGTConfig(dataset="meshes", root=meshes, out=out,
                                                           render_resolution=64, local=True, progress=False,
                                                           report_dir=root / "occ-report"))
    except Exception as e:  # noqa: BLE001 - no offscreen OpenGL here: the data cannot be made
        pytest.skip(f"offscreen renderer unavailable ({type(e).__name__})")
    assert res.counts["done"] == 2
    return out


@pytest.fixture(scope="session")
def occupancy_data(tmp_path_factory):
    """:func:`make_occupancy_data` once per session (read-only for the tests)."""
    return make_occupancy_data(tmp_path_factory.mktemp("occupancy-data"))
