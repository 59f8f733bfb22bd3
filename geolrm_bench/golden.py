"""Compat-mode equivalence with the official GeoLRM forward: the golden outputs and their comparison.

``tests/data/golden/official_seed11.npz`` holds what the OFFICIAL code computes for the random
seed-11 checkpoint of ``tests/data/golden/official_sd.py`` on stored inputs (its README says how
it was made). This module runs our ``paper`` preset in compat mode on those inputs
(:func:`golden_forward`) and compares every stored array within a :class:`GoldenTolerances`
(:func:`compare_golden`). Both ``tests/test_model_official.py`` (CPU) and
``python -m geolrm_bench.gpu_check`` (CUDA) call these functions, so the two checks cannot drift.

Tolerances (max absolute difference unless stated; the golden README's rounding-noise scale on
the CPU is about 1e-6 for the logits and 4e-6 for latents and Gaussians, and a transformers
version change moves them by 1e-3 to 7e-3):

====================  ========  ========  =====================================================
quantity              CPU       CUDA      note
====================  ========  ========  =====================================================
proposal logits x0    2e-5      5e-5      exact fp32 block X = 0..7
proposal logits       1e-3      1e-3      against the fp16-stored full grid (fp16 step ~5e-4)
feature maps,         1e-4      2e-4      plucker, DINO, deconv, conv, ref_uv, layer 0,
latents, Gaussians                        latents and Gaussians (first and padding rows)
f64 sums              1e-5 rel  2e-5 rel  sums and sums of squares, per-channel Gaussian sums
occupancy flips       |l|<1e-4  |l|<1e-4  the sign of a logit may differ only where it is ~0
====================  ========  ========  =====================================================

CUDA runs in fp32 with TF32 off (:func:`gpu_check <geolrm_bench.gpu_check>` sets it); its
cuBLAS/cuDNN kernels sum in other orders than the CPU's, hence bounds 2-2.5x the CPU ones, still
more than 10x below the smallest real deviation the README measured (the version probe).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import geolrm_bench.model as model_pkg
from geolrm_bench.errors import BenchError
from geolrm_bench.model.checkpoint import build_empty, load_into
from geolrm_bench.model.config import get_config

#: The golden fixture folder of a source checkout (not part of an installed wheel).
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"
GOLDEN_FILE = "official_seed11.npz"
GOLDEN_SEED = 11


@dataclass(frozen=True)
class GoldenTolerances:
    """Limits of :func:`compare_golden` (absolute unless named ``rel``)."""

    name: str
    logits_x0: float  # exact fp32 logits of the first X slabs
    logits_f16: float  # full logit grid against its fp16 copy
    features: float  # feature maps, latents, Gaussians
    rel_sums: float  # relative, on float64 sums and sums of squares
    flip_logit: float  # occupancy may differ only where |logit| < this


CPU_TOLERANCES = GoldenTolerances("cpu", logits_x0=2e-5, logits_f16=1e-3, features=1e-4, rel_sums=1e-5,
                                  flip_logit=1e-4)
CUDA_TOLERANCES = GoldenTolerances("cuda", logits_x0=5e-5, logits_f16=1e-3, features=2e-4, rel_sums=2e-5,
                                   flip_logit=1e-4)


def tolerances_for(device: str | torch.device) -> GoldenTolerances:
    """:data:`CUDA_TOLERANCES` for a CUDA device, else :data:`CPU_TOLERANCES`."""
    return CUDA_TOLERANCES if torch.device(device).type == "cuda" else CPU_TOLERANCES


@dataclass
class GoldenCheck:
    """One compared quantity: ``error`` (max abs, relative, or worst flipped |logit|) vs ``limit``."""

    name: str
    kind: str  # "max_abs" | "rel" | "flips" | "manifest"
    error: float
    limit: float
    ok: bool
    detail: str = ""


def load_golden(directory: str | Path = GOLDEN_DIR) -> dict[str, np.ndarray]:
    """The arrays of ``official_seed11.npz`` in ``directory`` (one-line BenchError if missing)."""
    path = Path(directory) / GOLDEN_FILE
    if not path.is_file():
        raise BenchError("golden outputs not found (they live in a source checkout, tests/data/golden/)",
                         path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def check_manifest(golden: Mapping[str, np.ndarray], manifest: str | Path) -> GoldenCheck:
    """The fixture was made for exactly this ``official_keys.tsv`` (sha256 stored in the npz)."""
    digest = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    want = str(golden["manifest_sha256"])
    return GoldenCheck("manifest_sha256", "manifest", float(digest != want), 0.0, digest == want,
                       "" if digest == want else f"{digest[:12]} vs {want[:12]}")


def official_random_state_dict(directory: str | Path = GOLDEN_DIR, seed: int = GOLDEN_SEED) -> dict:
    """The seed-``seed`` official-layout state dict of ``official_sd.py`` (CPU fp32 tensors)."""
    spec = importlib.util.spec_from_file_location("official_sd", Path(directory) / "official_sd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.random_official_state_dict(seed=seed, ref=str(Path(model_pkg.__file__).parent))


def golden_model(directory: str | Path = GOLDEN_DIR, device: str | torch.device = "cpu"):
    """The ``paper`` preset in compat mode with the golden seed-11 weights, in eval mode on ``device``.

    Same result as saving the state dict and :func:`geolrm_bench.model.checkpoint.load_official`
    (which the CPU test does), without the 1.3 GB round trip through a file.
    """
    cfg = get_config("paper")
    cfg.compat = True
    sd = official_random_state_dict(directory)
    model = load_into(build_empty(cfg), sd, source="official_sd.py seed 11")
    return model.to(device).eval()


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def golden_forward(model, golden: Mapping[str, np.ndarray], device: str | torch.device | None = None
                   ) -> dict[str, np.ndarray]:
    """Run ``model`` (compat mode) on the golden inputs as the official code did; float64 outputs.

    Proposal on the stored images and cameras (no resize), then reconstruction from the stored
    token list (``anchor_xyz``: real anchors + zero padding). Returns ``proposal_logits``
    ``[R, R, R]``, ``ser_high_v0``, ``plucker_v0``, ``lrm_dino_v0``, ``lrm_high_v0``,
    ``lrm_low_v0`` (view 0 maps), ``ref_uv`` ``[V, N, 2]``, ``layer0`` ``[N, D]``, ``latents``
    ``[N, D]`` and ``gaussians`` ``[N * gs_per_token, 14]`` (xyz, opacity, scale, quat wxyz, rgb).
    """
    if device is None:
        device = next(model.parameters()).device
    images = torch.from_numpy(golden["images"]).to(device)
    c2w = torch.from_numpy(golden["c2ws"]).to(device)
    K = torch.from_numpy(golden["Ks"]).to(device)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        inter: dict = {}
        logits = model.propose(images, c2w, K, resize=False, intermediates=inter)[0]
        out["proposal_logits"] = logits.detach().to("cpu", torch.float32).numpy()
        out["ser_high_v0"] = _np(inter["ser_high"][0])
        inter = {}
        anchors = torch.from_numpy(golden["anchor_xyz"])[None].to(device)
        g = model.reconstruct(images, c2w, K, anchors=anchors, resize=False, intermediates=inter)
        out["plucker_v0"] = _np(inter["lrm_plucker"][0])
        for key in ("dino", "high", "low"):
            out[f"lrm_{key}_v0"] = _np(inter[f"lrm_{key}"][0])
        out["ref_uv"] = _np(inter["ref_uv"][0])
        out["layer0"] = _np(inter["layer0"][0])
        out["latents"] = _np(inter["latents"][0])
        flat = torch.cat([g.means[0], g.opacities[0, :, None], g.scales[0], g.quats[0], g.colors[0]], -1)
        out["gaussians"] = _np(flat)
    return out


def _max_abs(name: str, ours, ref, limit: float) -> GoldenCheck:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return GoldenCheck(name, "max_abs", float("inf"), limit, False, f"shape {ours.shape} vs {ref.shape}")
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    ok = bool(err <= limit)  # NaN fails
    return GoldenCheck(name, "max_abs", err, limit, ok, "" if ok else f"max abs diff {err:.3g} > {limit:.1g}")


def _rel(name: str, ours, ref, limit: float) -> GoldenCheck:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return GoldenCheck(name, "rel", float("inf"), limit, False, f"shape {ours.shape} vs {ref.shape}")
    rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)
    err = float(rel.max()) if rel.size else 0.0
    ok = bool(err <= limit)
    return GoldenCheck(name, "rel", err, limit, ok, "" if ok else f"relative diff {err:.3g} > {limit:.1g}")


def compare_golden(outputs: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                   tol: GoldenTolerances = CPU_TOLERANCES) -> list[GoldenCheck]:
    """Every check of the golden README, one :class:`GoldenCheck` each (nothing raises on a mismatch).

    ``outputs`` as :func:`golden_forward` returns them. "first"/"pad" rows are the first and last
    ``len(golden[...])`` rows, the x0 logits the first ``len(golden["proposal_logits_x0_f32"])``
    slabs, ``ref_uv`` the first ``golden["ref_uv_first16"].shape[1]`` anchors, so the function
    works on any consistent set of shapes (the unit tests use small ones).
    """
    logits = np.asarray(outputs["proposal_logits"], dtype=np.float64)
    checks: list[GoldenCheck] = []
    x0 = golden["proposal_logits_x0_f32"]
    checks.append(_max_abs("proposal_logits_x0_f32", logits[: len(x0)], x0, tol.logits_x0))
    checks.append(_max_abs("proposal_logits (f16)", logits, golden["proposal_logits"].astype(np.float32),
                           tol.logits_f16))
    checks.append(_rel("proposal_logits_sum", logits.sum(), golden["proposal_logits_sum"], tol.rel_sums))
    checks.append(_rel("proposal_logits_sumsq", (logits**2).sum(), golden["proposal_logits_sumsq"],
                       tol.rel_sums))
    ref_mask = np.unpackbits(golden["occupied_packbits"])[: logits.size].astype(bool)
    if ref_mask.size == logits.size:
        flips = (logits.reshape(-1) > 0) != ref_mask
        worst = float(np.abs(logits.reshape(-1)[flips]).max()) if flips.any() else 0.0
        ok = worst < tol.flip_logit
        checks.append(GoldenCheck("occupancy flips", "flips", worst, tol.flip_logit, ok,
                                  f"{int(flips.sum())} flipped voxels, largest abs logit {worst:.3g}"))
    else:
        checks.append(GoldenCheck("occupancy flips", "flips", float("inf"), tol.flip_logit, False,
                                  f"mask of {ref_mask.size} voxels vs {logits.size} logits"))
    checks.append(_max_abs("ser_high_v0", outputs["ser_high_v0"], golden["ser_high_v0"], tol.features))
    for name in ("plucker_v0", "lrm_dino_v0", "lrm_high_v0", "lrm_low_v0"):
        checks.append(_max_abs(name, outputs[name], golden[name], tol.features))
    k = golden["ref_uv_first16"].shape[1]
    checks.append(_max_abs("ref_uv_first16", outputs["ref_uv"][:, :k], golden["ref_uv_first16"],
                           tol.features))
    first = golden["lrm_layer0_first"]
    checks.append(_max_abs("lrm_layer0_first", outputs["layer0"][: len(first)], first, tol.features))
    lat = np.asarray(outputs["latents"], dtype=np.float64)
    checks.append(_max_abs("latents_first", lat[: len(golden["latents_first"])], golden["latents_first"],
                           tol.features))
    checks.append(_max_abs("latents_pad", lat[-len(golden["latents_pad"]):], golden["latents_pad"],
                           tol.features))
    checks.append(_rel("latents_sum", lat.sum(), golden["latents_sum"], tol.rel_sums))
    checks.append(_rel("latents_sumsq", (lat**2).sum(), golden["latents_sumsq"], tol.rel_sums))
    flat = np.asarray(outputs["gaussians"], dtype=np.float64)
    n_first = len(golden["gaussians_first"])
    checks.append(_max_abs("gaussians_first", flat[:n_first], golden["gaussians_first"], tol.features))
    checks.append(_max_abs("gaussians_pad", flat[-len(golden["gaussians_pad"]):], golden["gaussians_pad"],
                           tol.features))
    checks.append(_rel("gaussians_sum", flat.sum(), golden["gaussians_sum"], tol.rel_sums))
    checks.append(_rel("gaussians_sumsq", (flat**2).sum(), golden["gaussians_sumsq"], tol.rel_sums))
    checks.append(_rel("gaussians_channel_sum", flat.sum(0), golden["gaussians_channel_sum"], tol.rel_sums))
    return checks


def failures(checks: list[GoldenCheck]) -> list[str]:
    """One line per failed check (empty when all pass)."""
    return [f"{c.name}: {c.detail or f'{c.error:.3g} > {c.limit:.1g}'}" for c in checks if not c.ok]
