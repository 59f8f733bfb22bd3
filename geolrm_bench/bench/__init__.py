"""`make bench`: each module here has ``main() -> None`` printing one section's table.

Sections measure in one run and print ratios against a baseline measured in the same
run, so numbers are comparable on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, process_time
from typing import Any


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float, Any]:
    """Run ``fn`` ``repeats`` times; return (best wall s, CPU s of that run, its output).

    CPU seconds are ``time.process_time`` (all threads of this process), so on a busy machine
    they show the work done while wall time shows what the user waits.
    """
    best, cpu, out = float("inf"), float("nan"), None
    for _ in range(repeats):
        t0, c0 = perf_counter(), process_time()
        result = fn()
        t, c = perf_counter() - t0, process_time() - c0
        if t < best:
            best, cpu, out = t, c, result
    return best, cpu, out
