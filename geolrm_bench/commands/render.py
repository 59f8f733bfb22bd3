"""``geolrm-bench render [SRC] --out DIR``: render objects into GObjaverse 40-view folders.

SRC is one mesh file, one object (e.g. a GSO zip) or a dataset root. Without SRC the
default root of ``--dataset`` (``sample`` when absent) is used; without ``--dataset`` the
kind is detected from SRC. Each object becomes ``DIR/<name>/00000..00039/`` (PNG RGBA,
camera JSON with c2w in OpenCV axes of a Z-up world, ``_nd.exr`` normals + z-depth) plus
``metadata.json``; ``DIR/index.json`` lists the finished objects. Rendering is unlit
albedo (see :mod:`geolrm_bench.rendering`). Re-running skips finished objects
(``--force`` re-renders); a failing object is reported and the others still render.
Only the toolkit's own object folders are ever replaced (a folder of the same name without
``metadata.json`` is left alone and that object fails); one run per ``DIR`` at a time (a lock
file; ``--wait`` waits). Exit status: 0 all rendered, 1 some objects failed (index.json lists
them), 2 bad input or ``DIR`` in use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geolrm_bench.errors import BenchError
from geolrm_bench.gobjaverse import INDEX_NAME
from geolrm_bench.io import ensure_output_root, output_lock


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "render", help="render meshes / datasets into the GObjaverse 40-view format",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", type=Path, default=None, metavar="SRC",
                   help="mesh file, object or dataset root (default: the dataset's default root)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default out/render/<dataset>)")
    p.add_argument("--resolution", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--dataset", default=None,
                   choices=["gso", "omni", "scans", "hope", "meshes", "sample", "ycb", "synth"],
                   help="dataset kind (default: detected from SRC; 'sample' without SRC)")
    p.add_argument("--backend", default="osmesa", choices=["osmesa", "egl"],
                   help="OpenGL platform (default osmesa, CPU)")
    p.add_argument("--limit", type=int, default=None, metavar="K", help="render only the first K objects")
    p.add_argument("--views", type=int, nargs="+", default=None, metavar="I",
                   help="view indices 0..39 (default all 40)")
    p.add_argument("--exr-compression", default="rle", choices=["none", "rle", "zips", "zip", "piz", "pxr24"],
                   help="compression of the _nd.exr files (default rle: lossless and fastest to write; "
                        "zip is ~40%% smaller and ~2x slower to encode)")
    p.add_argument("--force", action="store_true", help="re-render objects that are already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true",
                   help="if another run holds --out (its lock file), wait for it instead of exiting 2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geolrm_bench import datasets
    from geolrm_bench.rendering import render_collection

    if args.resolution <= 0:
        raise BenchError(f"--resolution must be positive, got {args.resolution}")
    if args.limit is not None and args.limit <= 0:
        raise BenchError(f"--limit must be positive, got {args.limit}")
    if args.src is None:
        kind = args.dataset or "sample"
        src = datasets.default_root(kind)
    else:
        src = args.src
        if not src.exists():
            raise BenchError("source not found", src)
        kind = args.dataset or datasets.detect_dataset(src)
    refs = datasets.list_objects(kind, src)
    if args.limit is not None:
        refs = refs[: args.limit]
    out = args.out if args.out is not None else Path("out") / "render" / kind
    # a file or someone else's folder at --out: one line, exit 2, before any rendering
    ensure_output_root(out, markers=(INDEX_NAME,), kind="render", lock=False)
    print(f"rendering {len(refs)} {kind} object(s) from {src} -> {out} "
          f"({args.resolution}x{args.resolution}, {args.backend})")
    with output_lock(out, wait=args.wait, log=lambda m: print(m, file=sys.stderr, flush=True)):
        summary = render_collection(refs, out, resolution=args.resolution, backend=args.backend,
                                    skip_existing=not args.force, views=args.views,
                                    exr_compression=args.exr_compression, progress=not args.quiet)
    print(summary)
    if summary.failed:  # exit 1: some objects failed, index.json written
        print(f"{len(summary.failed)} of {len(refs)} object(s) failed (listed above and in "
              f"{out / INDEX_NAME})", file=sys.stderr)
        return 1
    return 0
