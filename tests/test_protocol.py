"""Protocol view indices and object subsets, checked against hand-derived values."""

from __future__ import annotations

import math

import pytest

from geolrm_bench.errors import BenchError
from geolrm_bench.protocol import (
    DEFAULT_TEST_VIEWS,
    ORBIT_VIEWS,
    RING_VIEWS,
    SUPPORTED_NUM_INPUT_VIEWS,
    Protocol,
    input_view_ids,
    parse_view_ids,
    select_objects,
)


def test_four_views_match_official_test_step():
    assert input_view_ids(4) == [0, 6, 12, 18]


def test_six_views_every_sixty_degrees():
    # 24 orbit views 15 deg apart -> 6 views 60 deg apart = every 4th view
    assert input_view_ids(6) == [0, 4, 8, 12, 16, 20]


@pytest.mark.parametrize("n", range(1, 25))
def test_evenly_spaced_unique_and_round_half_up(n):
    ids = input_view_ids(n)
    assert len(ids) == n and len(set(ids)) == n
    assert ids == sorted(ids)
    for i, v in enumerate(ids):
        exact = i * 24 / n
        assert v == math.floor(exact + 0.5)  # round half up
        assert abs(v - exact) <= 0.5
    assert set(ids) <= set(ORBIT_VIEWS)


def test_round_half_up_not_bankers():
    # N = 16: i = 1 -> 1.5 -> 2 (banker's rounding would also give 2), i = 3 -> 4.5 -> 5 (banker's: 4)
    assert input_view_ids(16)[3] == 5


@pytest.mark.parametrize("n", SUPPORTED_NUM_INPUT_VIEWS)
def test_test_views_disjoint_and_fixed(n):
    p = Protocol(num_input_views=n)
    assert p.test_views == list(DEFAULT_TEST_VIEWS)
    assert not set(p.test_views) & set(p.input_views)
    assert set(p.test_views) <= set(RING_VIEWS)
    assert len(p.test_views) == 4


def test_custom_and_bad_views():
    p = Protocol(input_views=[1, 2, 3], test_views=[30])
    assert p.num_input_views == 3
    with pytest.raises(BenchError, match="disjoint"):
        Protocol(input_views=[0, 30], test_views=[30])
    with pytest.raises(BenchError):
        input_view_ids(25)
    assert parse_view_ids("0, 6,12") == [0, 6, 12]
    with pytest.raises(BenchError, match="integers"):
        parse_view_ids("a,b")
    with pytest.raises(BenchError, match="0..39"):
        parse_view_ids("40")
    with pytest.raises(BenchError, match="duplicate"):
        parse_view_ids("1,1")


def test_select_objects_seeded_subset():
    names = [f"obj{i:03d}" for i in range(50)]
    a = select_objects(names, 10, seed=3)
    b = select_objects(list(reversed(names)), 10, seed=3)
    assert a == b  # independent of listing order
    assert len(a) == 10 and len(set(a)) == 10 and a == sorted(a) and set(a) <= set(names)
    assert select_objects(names, 10, seed=4) != a
    assert select_objects(names[:5], 100) == names[:5]
    assert select_objects(names, None) == names


def test_describe_names_the_lpips_network_used():
    assert any("LPIPS-VGG" in line for line in Protocol().describe())
    lines = Protocol().describe(lpips_net="alex")
    assert any("LPIPS-AlexNet" in line for line in lines)
    assert not any("VGG" in line for line in lines)
