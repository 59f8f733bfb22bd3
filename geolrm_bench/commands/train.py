"""``geolrm-bench train``: train GeoLRM's proposal (stage 1) or reconstruction (stage 2) network.

The official recipe is the default (TRAINING.md; every value in
:class:`geolrm_bench.training.config.TrainConfig`); deviations are options (``--config key=value``,
``model.KEY=value`` for the model preset). Runs on Ray Train (DDP; gloo on CPU, NCCL with
``--use-gpu``) or, with ``--local``, in this process. Rerunning the same command resumes from the
newest checkpoint. The final model is written into ``--out`` (``config.json`` +
``model.safetensors``): ``geolrm-bench eval --checkpoint RUN`` and ``reconstruct --checkpoint RUN``
load it.

Examples::

    geolrm-bench train --stage proposal --data out/occupancy-gt --preset tiny --out out/train/proposal
    geolrm-bench train --stage reconstruction --data out/occupancy-gt --preset tiny \\
        --proposal out/train/proposal --out out/train/recon --steps 200 --config warmup=20
"""

from __future__ import annotations

import argparse
import warnings

from geolrm_bench.model.config import PRESETS


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train the proposal (stage 1) or reconstruction (stage 2) network, on Ray Train",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=["proposal", "reconstruction"],
                   help="proposal (stage 1: occupancy) or reconstruction (stage 2: Gaussians)")
    p.add_argument("--data", required=True,
                   help="folder written by `geolrm-bench occupancy-gt` "
                        "(renders/ + occupancy/<object>/pts.npy)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="model preset for a fresh model (default tiny; ignored with --init)")
    p.add_argument("--out", required=True,
                   help="run folder (checkpoints, metrics.csv, curves.png, final model)")
    p.add_argument("--init", default=None,
                   help="start from these weights: the official geolrm.ckpt or one of our run folders")
    p.add_argument("--proposal", default=None,
                   help="stage 2: the frozen proposal network (a stage-1 run folder or the official ckpt)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer updates (default: the schedule's T_max, 50000 / 12500)")
    p.add_argument("--batch-size", type=int, default=None, help="objects per micro-batch per worker (2 / 1)")
    p.add_argument("--accumulate", type=int, default=None, help="micro-batches per update (1 / 8)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (2e-4 / 1e-4)")
    p.add_argument("--num-workers", type=int, default=1, help="DDP workers (default 1)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU, gloo)")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (default: local)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32 (official) or bf16 autocast")
    p.add_argument("--fixed-input-views", type=int, default=None,
                   help="always N input views (Table 4 ablation; default: random 1-7 / 1-8)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field (e.g. warmup=20, checkpoint_every=100, w_lpips=0, "
                        "tokens=gt) or model.FIELD=VALUE (e.g. model.input_size=56); repeatable")
    p.add_argument("--local", action="store_true", help="run in this process without Ray (one worker)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        import sys

        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def run(args) -> int:
    from geolrm_bench.pipelines.train import run_training
    from geolrm_bench.training.config import TrainConfig, apply_overrides

    _one_line_warnings()
    values = dict(stage=args.stage, data=args.data, out=args.out, preset=args.preset, init=args.init,
                  proposal=args.proposal, steps=args.steps, batch_size=args.batch_size,
                  accumulate=args.accumulate, lr=args.lr, num_workers=args.num_workers,
                  use_gpu=args.use_gpu, address=args.address, precision=args.precision,
                  fixed_input_views=args.fixed_input_views, progress=not args.quiet)
    cfg = TrainConfig.from_dict(apply_overrides(values, args.config))
    if cfg.steps < cfg.warmup:
        print(f"train: note: {cfg.steps} updates end inside the {cfg.warmup}-update warmup "
              "(set --config warmup=... total_steps=... for a short run)")
    try:
        status = run_training(cfg, local=args.local)
    except KeyboardInterrupt:
        import sys

        print(f"train: stopped; rerun the same command to resume from the newest checkpoint in {cfg.out}",
              file=sys.stderr)
        raise
    out = cfg.out
    print(f"train {cfg.stage}: {status['step']} updates done")
    print(f"  model:       {out}/config.json + model.safetensors (geolrm-bench eval --checkpoint {out})")
    print(f"  metrics:     {out / 'metrics.csv'}, curves: {out / 'curves.png'}")
    print(f"  checkpoint:  {status.get('last_checkpoint')}")
    return 0
