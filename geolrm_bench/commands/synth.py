"""``geolrm-bench synth --count N --seed S --out DIR``: procedural training objects, on Ray.

Zeroverse-style objects (LRM-Zero, arXiv 2406.09371; :mod:`geolrm_bench.synth`): 1-9 random
primitives (cube, sphere, cylinder, cone, torus) with random textures (noise, stripes,
checkers, gradients, scikit-image photographs) and the height-field, boolean-difference and
wireframe augmentations, each normalised into [-0.5, 0.5]^3 and checked (non-empty, finite,
inside the box, textured, non-degenerate). Each object is ``DIR/s<S>_<index>/`` (OBJ + MTL +
PNG + ``meta.json`` with its recipe). Deterministic: the same seed gives the same bytes.
Resumable: objects whose files still match their checksums are skipped; deleted or changed
ones are regenerated. Use the result with ``--dataset synth --root DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geolrm_bench.errors import BenchError


def register(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "synth", help="generate procedural (Zeroverse-style) training objects, on Ray",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="number of objects (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the set (default 0)")
    p.add_argument("--start", type=int, default=0,
                   help="first object index (default 0); objects are s<seed>_<index>")
    p.add_argument("--out", type=Path, default=Path("data/synth"), help="output folder (default data/synth)")
    p.add_argument("--batch", type=int, default=8, help="objects per Ray task (default 8)")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (default: local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-retries", type=int, default=2, help="Ray retries of a crashed worker's task")
    p.add_argument("--local", action="store_true", help="run in this process without Ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geolrm_bench.pipelines.synth import SynthRunConfig, run_synth, tally

    cfg = SynthRunConfig(count=args.count, seed=args.seed, start=args.start, out=args.out, batch=args.batch,
                         address=args.address, num_cpus=args.num_cpus, max_retries=args.max_retries,
                         local=args.local, progress=not args.quiet)
    res = run_synth(cfg)
    c = res.counts
    print(f"synth: {c['done']} generated, {c['skipped']} skipped (already done), {c['failed']} failed "
          f"in {res.seconds:.1f} s")
    t = tally(res.records)
    for key in ("primitives", "textures", "augmentations"):
        print(f"  {key}: " + (", ".join(f"{k} {n}" for k, n in sorted(t[key].items())) or "none"))
    print(f"  objects:  {res.out}/s{cfg.seed}_<index>/ (model.obj, model.mtl, texture.png, meta.json)")
    print(f"  manifest: {res.manifest}")
    print(f"  use with: --dataset synth --root {res.out}")
    failed = [r for r in res.records if r.get("status") != "done"]
    for r in failed[:20]:
        print(f"  failed: {r['object']}: {r.get('error')}")
    if failed:
        raise BenchError(f"{len(failed)} of {len(res.records)} object(s) failed (listed above)")
    return 0
