"""The evaluation protocol: which views are inputs, which are test views, which objects.

Views follow the GObjaverse 40-view layout (see :mod:`geolrm_bench.cameras`): views 0-23 are
the orbit (elevation 5..30 deg, azimuth step 15 deg, distance 1.6450), 24 a duplicate, 25 top,
26 bottom, 27-38 the ring (elevation -5..5 deg, azimuth step 30 deg, distance 1.9547), 39 a
duplicate. Cameras look at the origin of the normalised object frame (Z-up, object inside
[-0.5, 0.5]^3).

Protocol (GeoLRM paper section 4; the paper publishes no view indices, so these are ours):

- **Input views** (N in {4, 6, 8, 12, 16, 20}): evenly spaced in azimuth among the 24 orbit
  views, view ``i`` = ``floor(i * 24 / N + 0.5)`` for ``i = 0..N-1`` (round half up, never
  Python's banker's rounding). N = 4 gives 0, 6, 12, 18 as the official code's test step.
  Because the step ``24 / N >= 1`` for N <= 24, the indices are strictly increasing, hence
  unique.
- **Test views**: 4 fixed ring views, 28, 31, 34, 37 (every third ring view, i.e. 90 deg
  apart in azimuth, starting one ring step after ring view 27), never inputs (inputs come
  from the orbit) and the same for every N.
- **Objects**: a seeded random subset of ``limit`` objects (default 100 as the paper, or all
  when fewer), drawn with ``numpy.random.default_rng(seed)`` from the name-sorted list and
  returned name-sorted.
- Image metrics at the test views at 512 px on a white background; geometry metrics against
  16,000 points sampled (fixed seed) on the ground-truth mesh in its own frame (in metres:
  axes and origin of the dataset's file, units converted with ``ObjectAsset.unit_m``); time and
  peak memory of the reconstruction alone (image encoding to Gaussians).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from geolrm_bench.errors import BenchError

NUM_VIEWS = 40
ORBIT_VIEWS: tuple[int, ...] = tuple(range(0, 24))
RING_VIEWS: tuple[int, ...] = tuple(range(27, 39))
SUPPORTED_NUM_INPUT_VIEWS: tuple[int, ...] = (4, 6, 8, 12, 16, 20)
SWEEP_NUM_INPUT_VIEWS: tuple[int, ...] = (4, 8, 12, 16, 20)  # paper Table 3
DEFAULT_TEST_VIEWS: tuple[int, ...] = (28, 31, 34, 37)
DEFAULT_LIMIT = 100
DEFAULT_NUM_GT_POINTS = 16000
DEFAULT_FSCORE_TAU = 0.2


def input_view_ids(num_views: int, orbit: Sequence[int] = ORBIT_VIEWS) -> list[int]:
    """Orbit view indices evenly spaced in azimuth: ``orbit[floor(i * len(orbit) / N + 0.5)]``.

    Args:
        num_views: N, the number of input views (1 <= N <= len(orbit)).
        orbit: the candidate views in azimuth order (default the 24 GObjaverse orbit views,
            15 deg apart).

    Returns:
        N distinct view indices in increasing azimuth. N = 4 -> [0, 6, 12, 18].
    """
    m = len(orbit)
    if not 1 <= int(num_views) <= m:
        raise BenchError(f"--input-views must be between 1 and {m}, got {num_views}")
    n = int(num_views)
    # integer arithmetic: floor(i*m/n + 1/2) = (2*i*m + n) // (2*n), exact, half rounds up
    ids = [orbit[(2 * i * m + n) // (2 * n)] for i in range(n)]
    assert len(set(ids)) == n
    return ids


def parse_view_ids(text: str | Sequence[int] | None, what: str = "view ids") -> list[int] | None:
    """Parse ``"0,6,12,18"`` (or a sequence of ints) into a list of view indices in [0, 40)."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise BenchError(f"{what}: expected comma-separated integers, got {text!r}") from None
    else:
        ids = [int(v) for v in text]
    if not ids:
        raise BenchError(f"{what}: empty list")
    bad = [v for v in ids if not 0 <= v < NUM_VIEWS]
    if bad:
        raise BenchError(f"{what}: indices must be in 0..{NUM_VIEWS - 1}, got {bad}")
    if len(set(ids)) != len(ids):
        raise BenchError(f"{what}: duplicate indices in {ids}")
    return ids


def select_objects(names: Sequence[str], limit: int | None = DEFAULT_LIMIT, seed: int = 0) -> list[str]:
    """A seeded random subset of ``limit`` names (all when fewer or ``limit is None``), name-sorted.

    The draw is over the name-sorted list, so it does not depend on listing order.
    """
    pool = sorted(set(names))
    if limit is None or limit >= len(pool):
        return pool
    if limit < 1:
        raise BenchError(f"--limit must be >= 1, got {limit}")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=int(limit), replace=False)
    return sorted(pool[i] for i in pick)


@dataclass
class Protocol:
    """One evaluation protocol instance (all indices are GObjaverse view indices 0..39)."""

    num_input_views: int = 6  # N
    input_views: list[int] = field(default_factory=list)  # empty -> input_view_ids(N)
    test_views: list[int] = field(default_factory=lambda: list(DEFAULT_TEST_VIEWS))
    resolution: int = 512  # render / evaluation resolution in pixels (square)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white
    limit: int | None = DEFAULT_LIMIT  # objects in the seeded subset (None = all)
    seed: int = 0  # subset seed (also the model's token-subsampling seed)
    num_gt_points: int = DEFAULT_NUM_GT_POINTS  # points sampled on the ground-truth surface
    gt_seed: int = 0  # seed of that sampling
    fscore_tau: float = DEFAULT_FSCORE_TAU  # F-score threshold in the headline [-1, 1]^3 frame; the same
    # number is used in metres (fscore_m) and in the unit box (fscore_unitbox)

    def __post_init__(self) -> None:
        if not self.input_views:
            self.input_views = input_view_ids(self.num_input_views)
        self.input_views = [int(v) for v in self.input_views]
        self.test_views = [int(v) for v in self.test_views]
        if len(set(self.input_views)) != len(self.input_views):
            raise BenchError(f"input views have duplicates: {self.input_views}")
        if self.num_input_views != len(self.input_views):
            self.num_input_views = len(self.input_views)
        overlap = sorted(set(self.input_views) & set(self.test_views))
        if overlap:
            raise BenchError(f"test views {overlap} are also input views; they must be disjoint")
        for v in [*self.input_views, *self.test_views]:
            if not 0 <= v < NUM_VIEWS:
                raise BenchError(f"view index {v} outside 0..{NUM_VIEWS - 1}")

    @property
    def used_views(self) -> list[int]:
        """The views an evaluation reads (inputs and test views), sorted: what a render needs."""
        return sorted({*self.input_views, *self.test_views})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["background"] = list(self.background)
        return d

    def describe(self, lpips_net: str = "vgg") -> list[str]:
        """Human-readable protocol lines for reports (``lpips_net``: the LPIPS backbone used)."""
        lpips_name = {"vgg": "LPIPS-VGG", "alex": "LPIPS-AlexNet"}.get(lpips_net, f"LPIPS-{lpips_net}")
        limit = "all" if self.limit is None else str(self.limit)
        return [
            f"Objects rendered by our renderer in the GObjaverse 40-view layout at {self.resolution} px, "
            f"white background; seeded random subset of {limit} objects (seed {self.seed}; all when fewer).",
            f"Input views (N = {self.num_input_views}): {', '.join(map(str, self.input_views))} "
            "(orbit views 0-23, evenly spaced in azimuth: floor(i*24/N + 0.5)).",
            f"Test views: {', '.join(map(str, self.test_views))} (ring views 27-38, never inputs, "
            "the same for every N).",
            f"Image metrics (PSNR, SSIM, {lpips_name}) at the test views; geometry metrics (Chamfer, "
            f"F-score@{self.fscore_tau:g}) against {self.num_gt_points} points sampled (seed "
            f"{self.gt_seed}) on the ground-truth mesh, with the object scaled to [-1, 1]^3 (the usual "
            "LRM evaluation frame, assumed to be the paper's); chamfer_m / fscore_m: the same in the "
            "ground-truth frame in metres (prediction mapped back with the object's normalising "
            "transform); chamfer_unitbox / fscore_unitbox: in the normalised frame (longest side 1).",
            "Time and peak memory of the reconstruction alone (image encoding to Gaussians), on the "
            "named device.",
        ]
