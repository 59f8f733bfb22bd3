"""``geolrm-bench ablate``: train and evaluate the paper's ablation variants (Tables 4 and 5).

Every variant (Table 4: full, no_plucker, no_low_level, no_high_level, no_rope, fixed_views with
the 4/8/12-view sweep; Table 5: deformable points 0/4/8/16) x seed is one trial of ONE Ray Tune
experiment: same data, same updates, same seeds. Each trial trains stage 2 (and its own stage 1
when its encoder differs from the full model's; the full-config proposal is trained once per
seed, or taken from --stage1), then evaluates the trained model on the held-out set. Rerunning
the same command resumes the experiment (finished trials are not trained again). The report,
our rows beside the paper's with 95% intervals, goes to reports/ablations/<run>/.
See geolrm_bench/ablation.py and geolrm_bench/pipelines/ablate.py.

Example (a micro budget on a CPU)::

    geolrm-bench ablate --table all --preset tiny --data out/train-data-synth --steps 20 \\
        --out out/ablations/micro --limit 4 --eval-resolution 128
"""

from __future__ import annotations

import argparse
import json

from geolrm_bench.errors import BenchError
from geolrm_bench.model.config import PRESETS
from geolrm_bench.protocol import DEFAULT_LIMIT

# geolrm_bench.ablation holds the definitions but loads pandas; the CLI builds every parser at start,
# so the names are repeated here (tests/test_ablation.py checks they match)
TABLES = ("4", "5", "all")
VARIANT_NAMES = ("full", "no_plucker", "no_low_level", "no_high_level", "no_rope", "fixed_views", "points_0",
                 "points_4", "points_8", "points_16")


def _model_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "ablate", help="train + evaluate the ablation variants of Tables 4/5 (one Ray Tune experiment)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="all", choices=TABLES, help="which table's variants (default all)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated variants instead of --table's ({', '.join(VARIANT_NAMES)}); "
                        "full is always included")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset (default tiny)")
    p.add_argument("--model", action="append", default=[], type=_model_override, metavar="FIELD=VALUE",
                   help="ModelConfig override for every variant, e.g. input_size=56; repeatable")
    p.add_argument("--data", required=True,
                   help="training data: a folder written by `geolrm-bench occupancy-gt`")
    p.add_argument("--steps", type=int, required=True, help="stage-2 optimizer updates per variant")
    p.add_argument("--stage1-steps", type=int, default=None, help="stage-1 updates (default: --steps)")
    p.add_argument("--stage1", default=None,
                   help="a trained proposal (stage-1 run folder or official ckpt) for the full config")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant: 42, 43, ... (default 1)")
    p.add_argument("--train-config", action="append", default=[], metavar="KEY=VALUE",
                   help="stage-2 TrainConfig field for every variant (e.g. accumulate=1, render_size=64)")
    p.add_argument("--stage1-config", action="append", default=[], metavar="KEY=VALUE",
                   help="stage-1 TrainConfig field (e.g. batch_size=1)")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (default: local)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per trial")
    p.add_argument("--cpus-per-trial", type=int, default=None,
                   help="CPUs (torch threads) per trial (default: every local CPU; 2 with --use-gpu)")
    p.add_argument("--out", required=True, help="run folder: trials, checkpoints, Ray Tune state")
    p.add_argument("--report-dir", default=None, help="report folder (default reports/ablations/<run name>)")
    p.add_argument("--eval-dataset", default="sample",
                   help="held-out set: a dataset kind or a folder of GObjaverse renders (default sample)")
    p.add_argument("--eval-root", default=None, help="its root (default: the kind's default root)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"held-out objects, a seeded subset (default {DEFAULT_LIMIT})")
    p.add_argument("--eval-resolution", type=int, default=512,
                   help="evaluation resolution, px (default 512)")
    p.add_argument("--lpips-net", default="vgg", choices=("vgg", "alex"),
                   help="LPIPS backbone (default vgg)")
    p.add_argument("--max-failures", type=int, default=0,
                   help="Ray Tune retries of a failed trial within one run (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from geolrm_bench.pipelines.ablate import AblationConfig, run_ablation  # Ray / torch: only when run

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if args.seeds < 1:
        raise BenchError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = AblationConfig(
        data=args.data, out=args.out, steps=args.steps, table=args.table, variants=variants,
        preset=args.preset, model_overrides=dict(args.model), seeds=args.seeds,
        stage1_steps=args.stage1_steps, stage1=args.stage1,
        train_config=args.train_config, stage1_config=args.stage1_config, address=args.address,
        use_gpu=args.use_gpu, cpus_per_trial=args.cpus_per_trial, report_dir=args.report_dir,
        eval_dataset=args.eval_dataset, eval_root=args.eval_root, limit=args.limit,
        eval_resolution=args.eval_resolution, lpips_net=args.lpips_net, max_failures=args.max_failures,
        quiet=args.quiet)
    out = run_ablation(cfg)
    print(f"ablate: report {out}/summary.md (summary.csv, psnr_vs_views.png, config.json); "
          f"runs under {cfg.out}")
    return 0
