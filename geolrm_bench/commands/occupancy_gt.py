"""``geolrm-bench occupancy-gt``: 128^3 occupancy ground truth (``pts.npy``) for a dataset, on Ray.

Renders each object's 40 GObjaverse views (kept under ``<out>/renders``; skipped when the
input is already GObjaverse-format renders), voxelizes the cleaned depth (paper A.1) and
writes ``<out>/occupancy/<object>/pts.npy`` (uint8 [N, 3]), a manifest and a report.
Resumable: finished objects whose files still match their checksums are skipped.
One run per ``--out`` (a lock file naming its pid and host; ``--wait`` waits for it); staging
folders of crashed workers are removed. Exit status: 0 all done, 1 some objects failed (the
report lists them), 2 bad input or another run holds ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "occupancy-gt", help="voxelize depth renders into occupancy ground truth (pts.npy), on Ray",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None,
                   help="dataset kind (gso, omni, scans, hope, meshes, sample, ycb); default: detected "
                        "from --root, or 'sample' without --root")
    p.add_argument("--root", default=None,
                   help="dataset root, or a folder of GObjaverse-format renders (rendering is then "
                        "skipped); default: the dataset's default root")
    p.add_argument("--out", default="out/occupancy-gt", help="output folder (default out/occupancy-gt)")
    p.add_argument("--limit", type=int, default=None, help="only the first K objects (by name)")
    p.add_argument("--resolution", type=int, default=128, help="voxel grid R (64, 128, 256; default 128)")
    p.add_argument("--render-resolution", type=int, default=512, help="view size in px (default 512)")
    p.add_argument("--backend", default="osmesa", choices=["osmesa", "egl"], help="renderer backend")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (default: local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-retries", type=int, default=2, help="Ray retries of a crashed worker's task")
    p.add_argument("--report-dir", default=None, help="report folder (default reports/occupancy/<run>)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true",
                   help="if another run holds --out (its lock file), wait for it instead of exiting 2")
    p.set_defaults(func=run)


def run(args) -> int:
    from geolrm_bench.pipelines.occupancy_gt import OccupancyGTConfig, run_occupancy_gt

    dataset = args.dataset
    if dataset is None and args.root is None:
        dataset = "sample"
    cfg = OccupancyGTConfig(
        dataset=dataset, root=None if args.root is None else Path(args.root), out=Path(args.out),
        limit=args.limit, resolution=args.resolution, render_resolution=args.render_resolution,
        backend=args.backend, address=args.address, num_cpus=args.num_cpus, max_retries=args.max_retries,
        report_dir=None if args.report_dir is None else Path(args.report_dir), local=args.local,
        progress=not args.quiet, wait=args.wait)
    res = run_occupancy_gt(cfg)
    c = res.counts
    print(f"occupancy-gt: {c['done']} done, {c['skipped']} skipped (already done), {c['failed']} failed "
          f"in {res.seconds:.1f} s")
    n_stale, bytes_stale = res.stale_staging
    if n_stale:
        print(f"  removed {n_stale} stale staging folder(s) of crashed workers "
              f"({bytes_stale / 2**20:.1f} MiB)")
    print(f"  pts.npy:  {res.out / 'occupancy'}/<object>/pts.npy")
    if any(r.get("files", {}).get("render_metadata") for r in res.records):
        print(f"  renders:  {res.out / 'renders'}")
    print(f"  manifest: {res.manifest}")
    print(f"  report:   {res.report_files.get('summary_md')} (+ summary.csv, distribution.csv)")
    for r in res.records:
        if r.get("status") != "done":
            print(f"  failed: {r['object']}: {r.get('error')}")
    if c["failed"]:
        print(f"{c['failed']} of {len(res.records)} objects failed; reasons: "
              f"{res.report_files.get('summary_md')} and {res.manifest}", file=sys.stderr)
    return 0 if c["failed"] == 0 else 1
