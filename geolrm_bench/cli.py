"""The ``geolrm-bench`` command line.

Each sub-command lives in its own module that defines ``register(subparsers)``;
it adds its parser and sets ``func`` to a function ``(args) -> int``. Modules are
imported only when listed here, so adding a command is one line. Any
:class:`~geolrm_bench.errors.BenchError` (or other expected failure) is printed as
one line ``geolrm-bench <cmd>: error: <reason>`` with exit code 2 (unexpected errors too, with
a hint to rerun with ``--debug``; 130 on Ctrl-C); ``--debug`` shows the traceback instead.
One exit-code rule for every command: 0 every object done; 1 some objects failed and the report
naming them was written; 2 usage or fatal error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from geolrm_bench.errors import BenchError, one_line

# name -> module defining register(subparsers). Order = order in --help.
COMMAND_MODULES: list[str] = [
    "geolrm_bench.commands.render",
    "geolrm_bench.commands.occupancy_gt",
    "geolrm_bench.commands.synth",
    "geolrm_bench.commands.metrics",
    "geolrm_bench.commands.reconstruct",
    "geolrm_bench.commands.evaluate",
    "geolrm_bench.commands.train",
    "geolrm_bench.commands.ablate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geolrm-bench",
        description="Render, voxelize, reconstruct and evaluate 3D objects under the GeoLRM protocols.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not written yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"geolrm-bench {args.command}: interrupted", file=sys.stderr)
        return 130
    except (BenchError, OSError) as e:  # bad input or environment (a full disk, a folder in the way)
        if args.debug:
            raise
        if isinstance(e, OSError) and e.filename is not None:  # name the path, e.g. ENOSPC, EISDIR
            reason = f"{e.filename}: {e.strerror or type(e).__name__}"
        else:
            reason = one_line(e, None, typed=False)
        print(f"geolrm-bench {args.command}: error: {reason}", file=sys.stderr)
        return 2
    except Exception as e:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(f"geolrm-bench {args.command}: error: {one_line(e, None, typed=True)} "
              "(rerun with --debug for a traceback)",
              file=sys.stderr)
        return 2  # fatal: exit 1 means "some objects failed, report written"


if __name__ == "__main__":
    sys.exit(main())
