"""Run the benchmark sections: ``python -m geolrm_bench.bench [--only NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time

SECTIONS = ["render", "occupancy", "metrics", "model", "evaluate", "train"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geolrm_bench.bench", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(f"# geolrm-bench benchmarks on {platform.node()} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()})")
    failed = []
    for name in args.only or SECTIONS:
        try:
            mod = importlib.import_module(f"geolrm_bench.bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"geolrm_bench.bench.{name}":
                print(f"\n## {name}: not available")
                continue
            raise
        print(f"\n## {name}")
        t0 = time.perf_counter()
        try:
            mod.main()
        except Exception as e:  # keep going: one broken section must not hide the others
            failed.append(name)
            print(f"section {name} failed: {type(e).__name__}: {e}")
        print(f"({name}: {time.perf_counter() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
