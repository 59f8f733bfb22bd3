"""``geolrm-bench reconstruct OBJECT_DIR``: run GeoLRM on one GObjaverse-format object.

Reads the input views (default the 4 orbit views 0, 6, 12, 18, composited on white), runs the
model (an official ``geolrm.ckpt`` via :func:`geolrm_bench.model.checkpoint.load_official`, a
folder written by ``save_pretrained`` via ``from_pretrained``, or a preset with RANDOM weights;
by default, without ``--checkpoint``/``--preset``, the bundled model
:data:`geolrm_bench.model.weights.BUNDLED`),
and writes into
``--out`` (default ``out/reconstruct/<object folder name>``), atomically as one folder:

* ``gaussians.ply``: the Gaussians in the standard 3DGS layout (:mod:`geolrm_bench.model.ply`), in the
  normalised object frame (Z-up, [-0.5, 0.5]^3);
* ``occupancy.npy``: the proposal network's occupied voxels (logit > 0) BEFORE the token cap, as
  voxel indices ``[N, 3]`` (X, Y, Z) on the model's ``grid_res``^3 grid (128 for ``paper``; uint8
  when ``grid_res <= 256``), C order, like the ground-truth ``pts.npy``; voxel ``(X, Y, Z)``
  covers ``[-0.5 + X/R, -0.5 + (X+1)/R)`` per axis;
* ``renders/<NNNNN>.png``: RGBA renders of the object's own cameras (all 40 views by default)
  at the views' file resolution (or ``--resolution``): straight (un-premultiplied) colour and
  alpha = accumulated opacity, so compositing on white gives the white-background render;
* ``metadata.json`` (written last): inputs, model source and config, seed, token and Gaussian
  counts, time and peak memory of the reconstruction (proposal + token selection +
  reconstruction + decoding; loading and rendering are not counted), versions, git commit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from geolrm_bench import gobjaverse
from geolrm_bench.errors import BenchError
from geolrm_bench.gobjaverse import view_name, view_paths, write_png_rgba
from geolrm_bench.io import atomic_dir, check_replaceable, write_json_atomic
from geolrm_bench.methods import CheckpointKind, GeoLRMMethod, load_geolrm, resolve_model_source
from geolrm_bench.model.config import PRESETS
from geolrm_bench.protocol import parse_view_ids

DEFAULT_INPUT_VIEWS = "0,6,12,18"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="run GeoLRM on one GObjaverse-format object: Gaussians (.ply), occupancy, 40 renders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("object_dir", metavar="OBJECT_DIR", help="folder holding 00000/ .. 00039/")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="official GeoLRM .ckpt, or a folder written by save_pretrained "
                                          "(default, without --preset: the bundled model "
                                          "model/weights/tiny-zeroverse)")
    src.add_argument("--preset", choices=list(PRESETS),
                     help="model preset with RANDOM weights (pipeline checks only)")
    p.add_argument("--input-views", default=DEFAULT_INPUT_VIEWS,
                   help=f"comma-separated input view indices (default {DEFAULT_INPUT_VIEWS})")
    p.add_argument("--out", default=None,
                   help="output folder (default out/reconstruct/<object name>); must not exist, be empty, "
                        "or be an earlier reconstruct output (then give --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier reconstruct output at --out (never anything else)")
    p.add_argument("--input-size", type=int, default=None, help="model input size in px (default: preset's)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="reconstruction token cap (default: preset's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and token subsampling")
    p.add_argument("--resolution", type=int, default=None, help="render size in px (default: the views')")
    p.add_argument("--render-views", default=None, help="views to render (default: all 40)")
    p.add_argument("--prune-opacity", type=float, default=None,
                   help="drop Gaussians below this opacity in gaussians.ply (default: keep all)")
    p.set_defaults(func=run)


def load_model(checkpoint: str | None, preset: str | None, seed: int = 0) -> tuple[object, dict]:
    """GeoLRM (eval mode, CPU) and the description of its source written into ``metadata.json``
    (``kind`` and the resolved checkpoint path, or the preset); the loading is
    :func:`geolrm_bench.methods.load_geolrm`, as in ``eval``."""
    checkpoint, preset = resolve_model_source(checkpoint, preset)  # default: the bundled model
    model, kind = load_geolrm(checkpoint, preset, seed)
    return model, _source(checkpoint, preset, kind)


def _source(checkpoint: str | None, preset: str | None, kind) -> dict:
    if checkpoint:
        return {"kind": str(kind), "checkpoint": str(Path(checkpoint).resolve())}
    return {"kind": str(kind), "preset": preset}


def _available_views(object_dir: Path) -> list[int]:
    return [i for i in range(40) if view_paths(object_dir, i)["json"].is_file()]


def render_views_to_pngs(gaussians, c2w_opengl, K_norm, views: list[int], height: int, width: int,
                         out_dir: Path, device: str, quiet: bool = False) -> None:
    """Render each camera and write ``<NNNNN>.png`` RGBA (straight colour, alpha = opacity)."""
    import torch  # heavy: only when the command runs
    from tqdm import tqdm

    from geolrm_bench.model.rasterize import render_gaussians  # torch

    out_dir.mkdir(parents=True, exist_ok=True)
    g = gaussians.to(device)
    for i, v in enumerate(tqdm(views, desc="render", unit="view", disable=quiet)):
        with torch.no_grad():
            out = render_gaussians(g, torch.as_tensor(c2w_opengl[i:i + 1], device=device),
                                   torch.as_tensor(K_norm[i:i + 1], device=device), height, width,
                                   background=(0.0, 0.0, 0.0))
        premult = out["rgb"][0].permute(1, 2, 0).float().cpu().numpy()  # [H, W, 3] on black
        alpha = out["alpha"][0, 0].float().cpu().numpy()  # [H, W]
        color = np.where(alpha[..., None] > 1e-6, premult / np.maximum(alpha[..., None], 1e-6), 0.0)
        rgba = np.concatenate([np.clip(color, 0, 1), np.clip(alpha, 0, 1)[..., None]], -1)
        write_png_rgba(out_dir / f"{view_name(v)}.png", np.round(rgba * 255).astype(np.uint8))


OUTPUT_MARKERS = ("metadata.json", "gaussians.ply", "occupancy.npy")  # a reconstruct output of older versions


def check_reconstruct_out(out: Path, object_dir: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is (or holds) the input object, a file, a link, or a folder the
    toolkit did not write; an earlier reconstruct output only with ``--overwrite``."""
    o, src = out.resolve(), object_dir.resolve()
    if o == src or o in src.parents:
        raise BenchError("is the input object folder (or holds it); choose another --out", out)
    check_replaceable(out, overwrite, OUTPUT_MARKERS)


def run(args) -> int:
    import torch  # heavy: only when the command runs

    from geolrm_bench.model.ply import save_ply  # torch

    object_dir = Path(args.object_dir)
    if not object_dir.is_dir():
        raise BenchError("object folder not found", object_dir)
    checkpoint, preset = resolve_model_source(args.checkpoint, args.preset)  # default: the bundled model
    input_views = parse_view_ids(args.input_views, "--input-views")
    if args.render_views is not None:
        render_views = parse_view_ids(args.render_views, "--render-views")
    else:
        render_views = _available_views(object_dir)
        if not render_views:
            raise BenchError("no view folders (00000/00000.json ...) found", object_dir)
    out = Path(args.out) if args.out else Path("out") / "reconstruct" / object_dir.resolve().name
    check_reconstruct_out(out, object_dir, args.overwrite)  # before any work
    method = GeoLRMMethod(checkpoint, preset, args.device, args.max_tokens, args.input_size, args.seed)
    if method.checkpoint_kind is CheckpointKind.RANDOM:
        print(f"warning: preset {preset!r} has RANDOM weights: outputs only check the pipeline")
    elif method.description:
        print(f"model: {method.description}")
    source = _source(checkpoint, preset, method.checkpoint_kind)
    if method.description:
        source["description"] = method.description
    model, device = method.model, method.device

    res = method.reconstruct(gobjaverse.load_views(object_dir, views=input_views, background=(1.0, 1.0, 1.0)))
    g = res.gaussians
    r = int(res.logits.shape[-1])
    occupancy = (res.logits > 0).nonzero().numpy().astype(np.uint8 if r <= 256 else np.uint16)  # [N, 3]
    c2w, K, (h, w) = gobjaverse.load_cameras(object_dir, render_views)
    if args.resolution is not None:
        h = w = int(args.resolution)
    cost = res.cost.as_dict()
    t_render = time.perf_counter()
    with atomic_dir(out, overwrite=args.overwrite, markers=OUTPUT_MARKERS) as tmp:
        save_ply(tmp / "gaussians.ply", g, min_opacity=args.prune_opacity)
        np.save(tmp / "occupancy.npy", occupancy, allow_pickle=False)
        render_views_to_pngs(g, c2w, K, render_views, h, w, tmp / "renders", device)
        render_s = time.perf_counter() - t_render
        try:
            from geolrm_bench.reports import provenance  # pandas: only for the metadata

            prov = provenance()
        except Exception:  # noqa: BLE001 - provenance is best effort
            prov = {"torch": torch.__version__}
        meta = {
            "object_dir": str(object_dir.resolve()),
            "input_views": input_views,
            "render_views": render_views,
            "render_resolution": [h, w],
            "background": [1.0, 1.0, 1.0],
            "model": {**source, "config": model.cfg.to_dict(), "input_size": model.cfg.input_size,
                      "max_tokens": args.max_tokens if args.max_tokens is not None else model.cfg.max_tokens},
            "seed": args.seed,
            "device": device,
            "num_tokens": res.num_tokens,
            "num_token_slots": res.num_token_slots,
            "num_gaussians": len(g),
            "ply_min_opacity": args.prune_opacity,
            "occupancy": {"file": "occupancy.npy", "grid_res": r, "num_occupied": int(len(occupancy)),
                          "format": "voxel indices [N, 3] (X, Y, Z), C order, logit > 0, "
                                    "before the token cap"},
            "cost": cost,
            "render_seconds": render_s,
            "provenance": prov,
        }
        write_json_atomic(tmp / "metadata.json", meta)
    print(f"reconstruction: {cost['seconds']:.2f} s, peak memory {cost['peak_memory_gb']:.2f} GB "
          f"({cost.get('memory_method', '')}, {device}); {res.num_tokens} tokens, {len(g)} Gaussians, "
          f"{len(occupancy)} occupied voxels of {r}^3")
    print(f"rendered {len(render_views)} views at {h}x{w} in {render_s:.1f} s")
    print(f"outputs: {out}/ (gaussians.ply, occupancy.npy, renders/, metadata.json)")
    return 0
