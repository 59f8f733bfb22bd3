"""Official view sampling of the GObjaverse training loaders (TRAINING.md 3.2-3.3).

Per object, 8 views: 4 "orbit" views ``(o, o+6, o+12, o+18) mod 24`` (90 degrees apart on the
elevated orbit, offset ``o ~ U{0..23}``) then 4 "random" views drawn without replacement from the
other 36 of the 40 (top, bottom, ring and the duplicates 24/39 included). All 8 are supervised.

Per micro-batch (one draw shared by its objects): the inputs are ``n_orth ~ U{1..4}`` of the orbit
views and ``n_rand`` of the random views (``U{0..3}`` in stage 2, ``U{0..4}`` in stage 1), random
subsets, orbit views first; and one background colour ``~ U[0, 1]^3`` for the targets.
``fixed_input_views=N`` (the Table 4 "fixed # input views" ablation) always takes
``n_orth = min(N, 4)`` orbit and ``N - n_orth`` random views (the paper does not say how its fixed
6 views were split; 4 + 2 keeps the orbit quadruple whole).

All draws use an explicit :class:`numpy.random.Generator`, so a run seeded per step is exactly
reproducible after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_VIEWS = 40  # GObjaverse views per object
ORBIT_VIEWS = 24  # views 0..23: the elevated orbit, 15 degrees apart
VIEWS_PER_OBJECT = 8  # 4 orbit + 4 random
MAX_RAND_INPUTS = {"proposal": 4, "reconstruction": 3}


def sample_object_views(rng: np.random.Generator) -> list[int]:
    """8 view indices of one object: 4 orbit views 90 degrees apart, then 4 random others."""
    o = int(rng.integers(0, ORBIT_VIEWS))
    orth = [(o + 6 * k) % ORBIT_VIEWS for k in range(4)]
    rest = [v for v in range(NUM_VIEWS) if v not in orth]
    rand = [int(v) for v in rng.choice(rest, size=4, replace=False)]
    return orth + rand


@dataclass(frozen=True)
class InputDraw:
    """Which of the 8 sampled views are inputs (positions 0..3 = orbit, 4..7 = random)."""

    positions: tuple[int, ...]  # input positions, orbit ones first
    n_orth: int
    n_rand: int


def sample_input_positions(rng: np.random.Generator, stage: str,
                           fixed_input_views: int | None = None) -> InputDraw:
    """Input positions among the 8 views of every object of a micro-batch (official counts)."""
    if fixed_input_views is not None:
        n = int(fixed_input_views)
        if not 1 <= n <= VIEWS_PER_OBJECT:
            raise ValueError(f"fixed_input_views must be 1..8, got {n}")
        n_orth, n_rand = min(n, 4), n - min(n, 4)
    else:
        n_orth = int(rng.integers(1, 5))
        n_rand = int(rng.integers(0, MAX_RAND_INPUTS[stage] + 1))
    orth = sorted(int(i) for i in rng.choice(4, size=n_orth, replace=False))
    rand = sorted(4 + int(i) for i in rng.choice(4, size=n_rand, replace=False)) if n_rand else []
    return InputDraw(tuple(orth + rand), n_orth, n_rand)


def sample_background(rng: np.random.Generator) -> np.ndarray:  # [3] float32 in [0, 1)
    """One random RGB background for the targets of a micro-batch."""
    return rng.random(3).astype(np.float32)


#: Validation views: the 4 orbit views at offset 0 as inputs and 4 other ring views as targets.
VAL_INPUT_VIEWS = (0, 6, 12, 18)
VAL_TARGET_VIEWS = (3, 9, 15, 21)
