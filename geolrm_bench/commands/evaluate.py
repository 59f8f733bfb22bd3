"""``geolrm-bench eval`` and ``geolrm-bench sweep-views``: the paper's evaluation protocols.

eval: one N (default 6, Tables 1/2); sweep-views: N = 4, 8, 12, 16, 20 (Table 3) sharing
renders and ground truth. Both resume: finished objects (``<run>/objects/<name>.json``
with status ok) are skipped on a rerun. See :mod:`geolrm_bench.pipelines.evaluate` and
:mod:`geolrm_bench.protocol` for the protocol.
"""

from __future__ import annotations

import argparse
import sys

from geolrm_bench.protocol import DEFAULT_LIMIT, SWEEP_NUM_INPUT_VIEWS, parse_view_ids


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="sample",
                   help="dataset kind (gso, omni, scans, hope, meshes, sample, ycb) or a folder of "
                        "GObjaverse-format renders (default: sample)")
    p.add_argument("--root", default=None, help="dataset root (default: the kind's default root)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None,
                     help="official GeoLRM .ckpt, or a folder written by save_pretrained")
    src.add_argument("--preset", default=None, choices=["paper", "small", "tiny"],
                     help="model preset with RANDOM weights (pipeline checks only)")
    src.add_argument("--predictions", default=None,
                     help="evaluate another method: DIR/<object>/ holding a 3DGS .ply, a mesh, or the "
                          "test views as <NNNNN>.png (normalised object frame)")
    p.add_argument("--method", default=None, help="method name in the report")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"seeded random subset of objects (default {DEFAULT_LIMIT}; all when fewer)")
    p.add_argument("--all", dest="limit", action="store_const", const=None, help="every object")
    p.add_argument("--seed", type=int, default=0, help="subset and token-subsampling seed")
    p.add_argument("--test-view-ids", default=None, help="test views (default 28,31,34,37)")
    p.add_argument("--out", default=None, help="run folder (default reports/<run>)")
    p.add_argument("--run", default=None, help="run name (default eval-<dataset>-<method>-n<N>)")
    p.add_argument("--renders", default=None, help="render cache (default <out>/renders)")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--max-tokens", type=int, default=None, help="reconstruction token cap")
    p.add_argument("--input-size", type=int, default=None, help="model input size (default: preset's)")
    p.add_argument("--resolution", type=int, default=512, help="render/evaluation resolution (px)")
    p.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex"],
                   help="LPIPS backbone (default vgg, as the official GeoLRM test step)")
    p.add_argument("--num-gt-points", type=int, default=16000,
                   help="points sampled (fixed seed) on the ground-truth surface (default 16000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def _config(args, **over):
    from geolrm_bench.pipelines.evaluate import EvalConfig

    fields = dict(dataset=args.dataset, root=args.root, checkpoint=args.checkpoint, preset=args.preset,
                  predictions=args.predictions, method=args.method, limit=args.limit, seed=args.seed,
                  test_views=parse_view_ids(args.test_view_ids, "--test-view-ids"), out=args.out,
                  run=args.run, renders=args.renders, address=args.address, num_cpus=args.num_cpus,
                  local=args.local, device=args.device, max_tokens=args.max_tokens,
                  input_size=args.input_size, resolution=args.resolution, lpips_net=args.lpips_net,
                  num_gt_points=args.num_gt_points, quiet=args.quiet)
    fields.update(over)
    return EvalConfig(**fields)


def _eval(args) -> int:
    from geolrm_bench.pipelines.evaluate import run_eval

    ids = parse_view_ids(args.input_view_ids, "--input-view-ids")
    cfg = _config(args, num_input_views=len(ids) if ids else args.input_views, input_views=ids)
    res = run_eval(cfg)
    _print_summary(res.summary)
    print(f"report: {res.run_dir}/summary.md ({res.failed} failed)")
    return exit_code([res])


def _sweep(args) -> int:
    from geolrm_bench.pipelines.evaluate import run_sweep

    views = tuple(int(v) for v in (parse_view_ids(args.views, "--views") or SWEEP_NUM_INPUT_VIEWS))
    sweep_dir, summary, results = run_sweep(_config(args), views)
    _print_summary(summary)
    print(f"report: {sweep_dir}/summary.md; plots: {sweep_dir}/psnr_vs_views.png, ssim_vs_views.png, "
          "time_memory_vs_views.png")
    return exit_code(results)


def exit_code(results) -> int:
    """The toolkit's exit-code rule (README, "Rules for outputs and errors"): 0 when every object
    of every run is done; 1 when some failed (or have no record) and the report was written,
    saying how many and where the reasons are (also with --quiet); 2 (raised as BenchError,
    before this) for usage and fatal errors."""
    bad = 0
    for r in results:
        if r.failed or not r.records:
            print(f"{r.failed} of {len(r.records)} objects failed; reasons: {r.run_dir}/per_object.csv "
                  "(columns status, error)", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


def _print_summary(summary) -> None:
    from tabulate import tabulate

    cols = ["method", "dataset", "num_input_views", "num_objects", "psnr", "ssim", "lpips", "chamfer",
            "fscore", "inference_s", "memory_gb"]
    print(tabulate(summary[cols], headers="keys", showindex=False, floatfmt=".4g"))
    if bool(summary["not_paper_model"].any()):
        print("NOTE: random weights or a non-paper preset: not the paper's model.")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model (or another method's outputs) on a dataset",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--input-views", type=int, default=6, help="N input views (default 6)")
    p.add_argument("--input-view-ids", default=None, help="explicit input views, e.g. 0,4,8,12,16,20")
    p.set_defaults(func=_eval)

    s = subparsers.add_parser("sweep-views", help="evaluate over N = 4, 8, 12, 16, 20 input views (Table 3)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(s)
    s.add_argument("--views", default=None, help="numbers of input views (default 4,8,12,16,20)")
    s.set_defaults(func=_sweep)
