"""``geolrm-bench reconstruct OBJECT_DIR``: run GeoLRM on one GObjaverse-format object.

Reads the input views (default the 4 orbit views 0, 6, 12, 18, composited on white), runs the
model (an official ``geolrm.ckpt`` via :func:`geolrm_bench.model.checkpoint.load_official`, a
folder written by ``save_pretrained`` via ``from_pretrained``, or a preset with RANDOM weights),
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

from geolrm_bench.errors import BenchError

DEFAULT_INPUT_VIEWS = "0,6,12,18"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="run GeoLRM on one GObjaverse-format object: Gaussians (.ply), occupancy, 40 renders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("object_dir", metavar="OBJECT_DIR", help="folder holding 00000/ .. 00039/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official GeoLRM .ckpt, or a folder written by save_pretrained")
    src.add_argument("--preset", choices=["paper", "small", "tiny"],
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


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


def load_model(checkpoint: str | None, preset: str | None, seed: int = 0) -> tuple[object, dict]:
    """GeoLRM from an official .ckpt, a ``save_pretrained`` folder, or a preset (random weights).

    Returns the model (eval mode, CPU) and a dict describing its source for metadata.
    """
    import torch

    from geolrm_bench.model.geolrm import GeoLRM

    if checkpoint:
        path = Path(checkpoint)
        if not path.exists():
            raise BenchError("checkpoint not found", path)
        if path.is_dir():
            model = GeoLRM.from_pretrained(path)
            kind = "pretrained"
        else:
            model = GeoLRM.load_official(path)
            kind = "official"
        return model.eval(), {"kind": kind, "checkpoint": str(path.resolve())}
    if preset is None:
        raise BenchError("give --checkpoint or --preset")
    from geolrm_bench.model.config import get_config

    torch.manual_seed(seed)
    model = GeoLRM(get_config(preset))
    return model.eval(), {"kind": "random", "preset": preset}


def _camera_list(object_dir: Path, views: list[int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """OpenGL c2w ``[V, 4, 4]``, normalised K ``[V, 3, 3]`` and (H, W) of the views' PNGs."""
    from PIL import Image

    from geolrm_bench.cameras import opencv_to_opengl, read_camera_json
    from geolrm_bench.gobjaverse import view_paths

    c2w, K = [], []
    for i in views:
        cam = read_camera_json(view_paths(object_dir, i)["json"])
        c2w.append(opencv_to_opengl(cam.c2w_opencv))
        K.append(cam.intrinsics)
    png = view_paths(object_dir, views[0])["png"]
    try:
        with Image.open(png) as im:
            w, h = im.size
    except (FileNotFoundError, OSError) as e:
        raise BenchError(f"cannot read image size ({e})", png) from None
    return np.stack(c2w).astype(np.float32), np.stack(K).astype(np.float32), (h, w)


def _available_views(object_dir: Path) -> list[int]:
    from geolrm_bench.gobjaverse import view_paths

    return [i for i in range(40) if view_paths(object_dir, i)["json"].is_file()]


def reconstruct_object(model, object_dir: Path, input_views: list[int], device: str, seed: int = 0,
                       max_tokens: int | None = None) -> dict:
    """Run the model on one object; returns gaussians (unbatched, CPU), occupancy indices and cost."""
    import torch

    from geolrm_bench import gobjaverse

    vb = gobjaverse.load_views(object_dir, views=input_views, background=(1.0, 1.0, 1.0))
    images = vb.images[None].to(device)  # [1, V, 3, H, W]
    c2w = vb.c2w_opengl[None].to(device)  # [1, V, 4, 4] OpenGL
    K = vb.intrinsics[None].to(device)  # [1, V, 3, 3] normalised
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cost = _Cost(device)
    with torch.no_grad(), cost:
        logits = model.propose(images, c2w, K)  # [1, R, R, R]
        anchors = model.anchors_from_occupancy(logits, max_tokens, gen)
        g = model.reconstruct(images, c2w, K, anchors=anchors)
    occ = (logits[0] > 0).nonzero().cpu().numpy()  # [N, 3] C order
    r = int(logits.shape[-1])
    occ = occ.astype(np.uint8 if r <= 256 else np.uint16)
    return {"gaussians": g[0].to("cpu"), "occupancy": occ, "grid_res": r,
            "num_tokens": int(anchors.mask[0].sum()), "num_token_slots": int(anchors.mask.shape[1]),
            "cost": cost.result()}


class _Cost:
    """Wall time and peak memory: ``geolrm_bench.metrics.cost.measure_cost`` when present, else
    ``time.perf_counter`` + ``resource`` max RSS (CPU) / ``torch.cuda.max_memory_allocated``."""

    def __init__(self, device: str):
        self.device = device
        self._ctx = None

    def __enter__(self):
        try:
            from geolrm_bench.metrics.cost import measure_cost
        except ImportError:
            measure_cost = None
        if measure_cost is not None:
            self._ctx = measure_cost(device=self.device)
            self._res = self._ctx.__enter__()
        else:
            import torch

            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        import resource

        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak, method = int(torch.cuda.max_memory_allocated()), "cuda-max-allocated"
        else:
            peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss-ru_maxrss"
        self._res = {"seconds": time.perf_counter() - self._t0, "peak_memory_bytes": peak,
                     "memory_method": method, "device": self.device}
        return False

    def result(self) -> dict:
        r = self._res
        d = r.as_dict() if hasattr(r, "as_dict") else dict(r)
        d["peak_memory_gb"] = d["peak_memory_bytes"] / 2**30
        return d


def render_views_to_pngs(gaussians, c2w_opengl, K_norm, views: list[int], height: int, width: int,
                         out_dir: Path, device: str, quiet: bool = False) -> None:
    """Render each camera and write ``<NNNNN>.png`` RGBA (straight colour, alpha = opacity)."""
    import torch
    from tqdm import tqdm

    from geolrm_bench.gobjaverse import view_name, write_png_rgba
    from geolrm_bench.model.rasterize import render_gaussians

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
    from geolrm_bench.io import check_replaceable

    o, src = out.resolve(), object_dir.resolve()
    if o == src or o in src.parents:
        raise BenchError("is the input object folder (or holds it); choose another --out", out)
    check_replaceable(out, overwrite, OUTPUT_MARKERS)


def run(args) -> int:
    import torch

    from geolrm_bench.io import atomic_dir, write_json_atomic
    from geolrm_bench.model.ply import save_ply
    from geolrm_bench.protocol import parse_view_ids

    object_dir = Path(args.object_dir)
    if not object_dir.is_dir():
        raise BenchError("object folder not found", object_dir)
    input_views = parse_view_ids(args.input_views, "--input-views")
    if args.render_views is not None:
        render_views = parse_view_ids(args.render_views, "--render-views")
    else:
        render_views = _available_views(object_dir)
        if not render_views:
            raise BenchError("no view folders (00000/00000.json ...) found", object_dir)
    out = Path(args.out) if args.out else Path("out") / "reconstruct" / object_dir.resolve().name
    check_reconstruct_out(out, object_dir, args.overwrite)  # before any work
    device = resolve_device(args.device)

    model, source = load_model(args.checkpoint, args.preset, args.seed)
    if source["kind"] == "random":
        print(f"warning: preset {args.preset!r} has RANDOM weights: outputs only check the pipeline")
    if args.input_size is not None:
        model.cfg.input_size = int(args.input_size)
    model = model.to(device)

    res = reconstruct_object(model, object_dir, input_views, device, args.seed, args.max_tokens)
    g = res["gaussians"]
    c2w, K, (h, w) = _camera_list(object_dir, render_views)
    if args.resolution is not None:
        h = w = int(args.resolution)
    t_render = time.perf_counter()
    with atomic_dir(out, overwrite=args.overwrite, markers=OUTPUT_MARKERS) as tmp:
        save_ply(tmp / "gaussians.ply", g, min_opacity=args.prune_opacity)
        np.save(tmp / "occupancy.npy", res["occupancy"], allow_pickle=False)
        render_views_to_pngs(g, c2w, K, render_views, h, w, tmp / "renders", device)
        render_s = time.perf_counter() - t_render
        try:
            from geolrm_bench.reports import provenance

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
            "num_tokens": res["num_tokens"],
            "num_token_slots": res["num_token_slots"],
            "num_gaussians": len(g),
            "ply_min_opacity": args.prune_opacity,
            "occupancy": {"file": "occupancy.npy", "grid_res": res["grid_res"],
                          "num_occupied": int(len(res["occupancy"])),
                          "format": "voxel indices [N, 3] (X, Y, Z), C order, logit > 0, "
                                    "before the token cap"},
            "cost": res["cost"],
            "render_seconds": render_s,
            "provenance": prov,
        }
        write_json_atomic(tmp / "metadata.json", meta)
    c = res["cost"]
    print(f"reconstruction: {c['seconds']:.2f} s, peak memory {c['peak_memory_gb']:.2f} GB "
          f"({c.get('memory_method', '')}, {device}); {res['num_tokens']} tokens, {len(g)} Gaussians, "
          f"{len(res['occupancy'])} occupied voxels of {res['grid_res']}^3")
    print(f"rendered {len(render_views)} views at {h}x{w} in {render_s:.1f} s")
    print(f"outputs: {out}/ (gaussians.ply, occupancy.npy, renders/, metadata.json)")
    return 0
