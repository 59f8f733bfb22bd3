"""``geolrm-bench eval`` and ``geolrm-bench sweep-views``: the paper's evaluation protocols.

eval: one N (default 6, Tables 1/2); sweep-views: N = 4, 8, 12, 16, 20 (Table 3) sharing
renders and ground truth. Both resume: finished objects (``<run>/objects/<name>.json``
with status ok) are skipped on a rerun. See :mod:`geolrm_bench.pipelines.evaluate` and
:mod:`geolrm_bench.protocol` for the protocol.
"""

from __future__ import annotations

import argparse
import sys

from geolrm_bench.eval_config import EvalConfig
from geolrm_bench.options import add_options, config_from_args
from geolrm_bench.protocol import SWEEP_NUM_INPUT_VIEWS, parse_view_ids


def _add_common(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Every :class:`~geolrm_bench.eval_config.EvalConfig` option (flags, defaults and help come
    from its fields), plus ``--all`` for ``--limit``."""
    every = ("--all", {"dest": "limit", "action": "store_const", "const": None, "help": "every object"})
    add_options(p, EvalConfig, skip=skip, after={"limit": [every]})


def _eval(args) -> int:
    from geolrm_bench.pipelines.evaluate import run_eval  # pipelines load pandas/Ray: only when run

    res = run_eval(config_from_args(EvalConfig, args))
    _print_summary(res.summary)
    print(f"report: {res.run_dir}/summary.md ({res.failed} failed)")
    return exit_code([res])


def _sweep(args) -> int:
    from geolrm_bench.pipelines.evaluate import run_sweep  # pipelines load pandas/Ray: only when run

    views = tuple(int(v) for v in (parse_view_ids(args.views, "--views") or SWEEP_NUM_INPUT_VIEWS))
    sweep_dir, summary, results = run_sweep(config_from_args(EvalConfig, args), views)
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

    from geolrm_bench.reports import model_rows

    cols = ["method", "dataset", "num_input_views", "num_objects", "psnr", "ssim", "lpips", "chamfer",
            "fscore", "inference_s", "memory_gb"]
    print(tabulate(summary[cols], headers="keys", showindex=False, floatfmt=".4g"))
    models = model_rows(summary)
    kinds = set(models["checkpoint_kind"].astype(str)) if "checkpoint_kind" in models.columns else set()
    if kinds == {"bundled"}:
        has_baselines = len(models) < len(summary)
        print("NOTE: the bundled model (trained here, tiny preset): not the paper's model; "
              + ("compare it with the baseline rows." if has_baselines else "compare it with baselines "
                 "(this run has none: --baselines)."))
    elif bool(models["not_paper_model"].any()):
        print("NOTE: random weights or a non-paper preset: not the paper's model.")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model (or another method's outputs) on a dataset",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.set_defaults(func=_eval)

    s = subparsers.add_parser("sweep-views", help="evaluate over N = 4, 8, 12, 16, 20 input views (Table 3)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(s, skip=("num_input_views", "input_views"))
    s.add_argument("--views", default=None, help="numbers of input views (default 4,8,12,16,20)")
    s.set_defaults(func=_sweep)
