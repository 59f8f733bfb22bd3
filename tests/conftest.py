"""Shared analytic-shape fixtures: a unit-ish sphere and a box, made with trimesh, in the normalised frame.

The shapes are centred at the origin of the Z-up world and fit in [-0.5, 0.5]^3, so the
GObjaverse cameras (distance 1.645 / 1.9547, fov 39.6 deg) see them whole.
"""

from __future__ import annotations

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
