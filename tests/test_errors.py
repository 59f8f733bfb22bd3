"""errors.one_line: the one formatter of exception text for records, summaries and the CLI."""

from __future__ import annotations

from geolrm_bench.errors import BenchError, one_line


def test_one_line_types_and_whitespace():
    e = ValueError("bad\n  value\tx")
    assert one_line(e) == "ValueError: bad value x"
    assert one_line(e, typed=False) == "bad value x"
    b = BenchError("a.json:\nbroken", None)
    assert one_line(b) == "a.json: broken"  # a BenchError's own text names file and problem
    assert one_line(b, typed=True) == "BenchError: a.json: broken"
    assert one_line(FileNotFoundError("x"), typed=False) == "x"


def test_one_line_limit_and_empty_message():
    assert one_line(RuntimeError("y" * 600)) == ("RuntimeError: " + "y" * 600)[:500]
    assert len(one_line(RuntimeError("y" * 600), None)) == 614
    assert one_line(AssertionError()) == "AssertionError"
    assert one_line(AssertionError(), typed=False) == "AssertionError"
