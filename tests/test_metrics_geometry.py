"""Chamfer, F-score, surface sampling, prediction points and the cost meter."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import trimesh

from geolrm_bench import _reference
from geolrm_bench.cameras import look_at_c2w
from geolrm_bench.metrics import (
    DepthViews,
    chamfer_distance,
    depth_to_points,
    fscore,
    geometry_metrics,
    measure_cost,
    nearest_distances,
    prediction_points,
    sample_surface_points,
)
from geolrm_bench.model.gaussians import Gaussians


def _grid(n: int = 5, spacing: float = 1.0) -> np.ndarray:
    ax = np.arange(n) * spacing
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)


# --------------------------------------------------------------------------- Chamfer / F-score
def test_grid_against_shifted_copy_by_hand():
    # Grid spacing 1, shifted by 0.3 along x: every point's nearest neighbour in the
    # other set is 0.3 away, except the boundary layer that "sticks out": pred points
    # with x = 4.3 are 0.3 from x = 4 as well; gt points at x = 0 are 0.3 from 0.3.
    # So every nearest distance is exactly 0.3.
    gt = _grid()
    pred = gt + [0.3, 0.0, 0.0]
    assert chamfer_distance(pred, gt) == pytest.approx(0.3)
    assert chamfer_distance(pred, gt, squared=True) == pytest.approx(0.09)
    assert fscore(pred, gt, taus=(0.2, 0.31)) == {0.2: 0.0, 0.31: pytest.approx(1.0)}


def test_grid_shift_beyond_half_spacing_by_hand():
    # Shift 0.7: interior pred points are 0.3 from the next grid layer, but the last
    # layer (x = 4.7, 25 of 125 points) is 0.7 from x = 4; symmetric for gt's x = 0 layer.
    gt = _grid()
    pred = gt + [0.7, 0.0, 0.0]
    expected = (100 * 0.3 + 25 * 0.7) / 125
    assert chamfer_distance(pred, gt) == pytest.approx(expected)
    r = geometry_metrics(pred, gt, taus=(0.5,), frame="normalized")
    assert r["precision@0.5"] == pytest.approx(100 / 125) and r["recall@0.5"] == pytest.approx(100 / 125)
    assert r["fscore@0.5"] == pytest.approx(0.8)
    assert r["frame"] == "normalized" and r["chamfer_form"] == "l1-euclidean"


def test_asymmetric_sets_by_hand():
    gt = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    pred = np.array([[0.0, 0, 0]])
    # pred->gt: 0; gt->pred: (0 + 1) / 2 -> CD = 0.25; P = 1, R = 0.5 -> F = 2/3
    r = geometry_metrics(pred, gt, taus=(0.2,))
    assert r["chamfer"] == pytest.approx(0.25)
    assert r["fscore@0.2"] == pytest.approx(2 / 3)


def test_identical_sets_give_zero_and_one():
    pts = np.random.default_rng(0).random((500, 3))
    r = geometry_metrics(pts, pts, taus=(0.01, 0.2))
    assert r["chamfer"] == 0.0 and r["fscore@0.01"] == 1.0 and r["fscore@0.2"] == 1.0


def test_kdtree_matches_brute_force_and_accepts_torch():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(700, 3)), rng.normal(size=(400, 3))
    np.testing.assert_allclose(nearest_distances(a, b), _reference.nearest_distances(a, b), rtol=1e-12)
    assert chamfer_distance(torch.from_numpy(a).float(), b) == pytest.approx(chamfer_distance(a, b), rel=1e-6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), "empty"),
    (np.array([[0.0, np.nan, 0.0]]), "NaN"),
    (np.zeros((4, 2)), r"\[N, 3\]"),
])
def test_bad_point_sets_raise(bad, match):
    good = np.zeros((3, 3))
    for f in (chamfer_distance, fscore, geometry_metrics):
        with pytest.raises(ValueError, match=match):
            f(bad, good)
        with pytest.raises(ValueError, match=match):
            f(good, bad)


# --------------------------------------------------------------------------- sampling
def test_surface_samples_lie_on_surface_deterministic_and_uniform():
    box = trimesh.creation.box(extents=(1.0, 2.0, 4.0))
    a = sample_surface_points(box, n=20000, seed=3)
    b = sample_surface_points(box, n=20000, seed=3)
    c = sample_surface_points(box, n=20000, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    half = np.array([0.5, 1.0, 2.0])
    on_face = np.isclose(np.abs(a), half, atol=1e-9)  # [n, 3]
    assert on_face.any(axis=1).all() and (np.abs(a) <= half + 1e-9).all()
    # area weighting: faces +-z have area 2 of total 28 -> fraction 4/28 on the two z faces
    frac_z = on_face[:, 2].mean()
    assert frac_z == pytest.approx(4 / 28, abs=0.01)


def test_sphere_samples_uniform_on_area():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    pts = sample_surface_points(sphere, n=40000, seed=0)
    assert np.abs(np.linalg.norm(pts, axis=1) - 1).max() < 2e-3
    # for a uniform distribution on the sphere, z is uniform on [-1, 1] (Archimedes)
    hist, _ = np.histogram(pts[:, 2], bins=4, range=(-1, 1))
    np.testing.assert_allclose(hist / len(pts), 0.25, atol=0.01)


def test_sampling_bad_mesh():
    with pytest.raises(ValueError, match="no triangles"):
        sample_surface_points(trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=np.zeros((0, 3), int)), 10)


# --------------------------------------------------------------------------- prediction points
def _gaussians(means: np.ndarray, opac: np.ndarray) -> Gaussians:
    n = len(means)
    return Gaussians(means=torch.from_numpy(means).float(), opacities=torch.from_numpy(opac).float(),
                     scales=torch.full((n, 3), 0.01), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                     colors=torch.full((n, 3), 0.5))


def test_prediction_points_from_gaussians_filters_and_subsamples():
    rng = np.random.default_rng(0)
    means = rng.random((1000, 3))
    opac = np.where(np.arange(1000) < 600, 0.9, 0.01)  # 400 transparent ones
    g = _gaussians(means, opac)
    all_pts = prediction_points(g, n=None)
    np.testing.assert_allclose(all_pts, means[:600], atol=1e-6)
    sub = prediction_points(g, n=100, seed=1)
    assert sub.shape == (100, 3) and len(np.unique(sub, axis=0)) == 100
    assert np.isin(sub, means[:600].astype(np.float32)).all()
    np.testing.assert_array_equal(sub, prediction_points(g, n=100, seed=1))
    w = prediction_points(g, n=2000, weighted=True)
    assert w.shape == (2000, 3)
    batched = Gaussians(**{k: v[None] for k, v in g.as_dict().items()})
    np.testing.assert_array_equal(prediction_points(batched, n=None), all_pts)
    with pytest.raises(ValueError, match="no Gaussian has opacity"):
        prediction_points(_gaussians(means, np.zeros(1000)))


def test_prediction_points_from_mesh():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    pts = prediction_points(sphere, method="mesh", n=500, seed=2)
    assert pts.shape == (500, 3)
    np.testing.assert_array_equal(pts, sample_surface_points(sphere, 500, seed=2))


def test_depth_back_projection_of_a_plane():
    # Camera at (2, 0, 0) looking at the origin (-x forward); a plane x = 0 is at
    # z-depth 2 everywhere. Camera right = forward x up = (-x) x z = +y, down = -z, so
    # by hand: world y = (u - 0.5)/fx * 2 and world z = -(v - 0.5)/fy * 2.
    H, W, f = 4, 6, 0.8
    K = np.array([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1.0]])
    c2w = look_at_c2w([2.0, 0, 0])  # OpenCV axes, Z-up
    depth = np.full((1, H, W), 2.0)
    alpha = np.ones((1, H, W))
    alpha[0, 0, 0] = 0.0  # masked out
    pts = depth_to_points(depth, c2w[None], K[None], alpha)
    assert pts.shape == (H * W - 1, 3)
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    exp_y = np.broadcast_to((u[None, :] - 0.5) / f * 2, (H, W)).reshape(-1)[1:]
    exp_z = np.broadcast_to(-(v[:, None] - 0.5) / f * 2, (H, W)).reshape(-1)[1:]
    np.testing.assert_allclose(pts[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(pts[:, 1], exp_y, atol=1e-12)
    np.testing.assert_allclose(pts[:, 2], exp_z, atol=1e-12)
    views = DepthViews(torch.from_numpy(depth)[:, None], c2w[None], K[None])
    via = prediction_points(views, method="depth", n=5)
    assert via.shape == (5, 3) and np.allclose(via[:, 0], 0.0)
    with pytest.raises(ValueError, match="no valid depth"):
        depth_to_points(np.zeros((1, H, W)), c2w[None], K[None])


# --------------------------------------------------------------------------- cost
def test_measure_cost_cpu_time_and_memory():
    import mmap

    size = 64 * 2**20
    with measure_cost("cpu") as cost:
        # A fresh anonymous mapping, every page written: 64 MiB of new resident memory whatever
        # the allocator already holds (np.ones could reuse freed, still-resident heap pages
        # left by earlier tests in the same process, so RSS would not grow).
        block = mmap.mmap(-1, size)
        block.write(b"\x01" * size)
        time.sleep(0.3)  # held long enough for the RSS sampler (5 ms period) to see it, on a busy machine too
        block.close()
    assert cost.seconds > 0 and cost.device == "cpu" and cost.device_name
    # the 64 MiB must show up, either as a new lifetime peak or in the RSS samples
    assert cost.peak_memory_bytes - cost.baseline_memory_bytes >= 48 * 2**20
    assert cost.peak_memory_gb == pytest.approx(cost.peak_memory_bytes / 2**30)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_cost_cuda_peak():
    with measure_cost("cuda") as cost:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert cost.peak_memory_bytes >= 256 * 2**20 and cost.memory_method == "cuda-max-allocated"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_measure_cost_cuda_without_cuda_is_a_clear_error():
    from geolrm_bench.errors import BenchError

    with pytest.raises(BenchError, match="CUDA is not available"):
        with measure_cost("cuda"):
            pass
