"""Official equivalence: the ``paper`` preset in compat mode reproduces the official GeoLRM forward.

The golden arrays (tests/data/golden/official_seed11.npz) were computed by the OFFICIAL code
(transformers 4.34.1) for the random seed-11 checkpoint of ``official_sd.py``; see the README
beside them for how, and for the tolerances used here.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"


def _official_sd_module():
    spec = importlib.util.spec_from_file_location("official_sd", GOLDEN / "official_sd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "official_seed11.npz"))


def test_golden_manifest_is_ours(golden):
    """The fixture was made for exactly the manifest shipped as package data."""
    digest = hashlib.sha256((ROOT / "model" / "official_keys.tsv").read_bytes()).hexdigest()
    assert digest == str(golden["manifest_sha256"])


def _close(name, ours, ref, atol):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs {ref.shape}"
    err = float(np.abs(ours - ref).max())
    assert err <= atol, f"{name}: max abs diff {err:.3g} > {atol:.1g}"
    return err


def _rel(name, ours, ref, rtol=1e-5):
    rel = abs(float(ours) - float(ref)) / max(abs(float(ref)), 1e-12)
    assert rel <= rtol, f"{name}: relative diff {rel:.3g} > {rtol:.1g} ({float(ours)} vs {float(ref)})"


@pytest.mark.slow
def test_official_forward_matches_golden(golden, tmp_path):
    from geolrm_bench.model.checkpoint import load_official

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    mod = _official_sd_module()
    sd = mod.random_official_state_dict(seed=11, ref=str(ROOT / "model"))
    ckpt = tmp_path / "geolrm.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    del sd
    gc.collect()
    t0 = time.perf_counter()
    model = load_official(ckpt, "paper", compat=True)
    ckpt.unlink()
    assert model.cfg.compat and not model.training

    images = torch.from_numpy(golden["images"])
    c2w = torch.from_numpy(golden["c2ws"])
    K = torch.from_numpy(golden["Ks"])
    with torch.inference_mode():
        inter: dict = {}
        t1 = time.perf_counter()
        logits = model.propose(images, c2w, K, resize=False, intermediates=inter)[0].numpy()
        t2 = time.perf_counter()
        _close("proposal_logits_x0_f32", logits[:8], golden["proposal_logits_x0_f32"], 2e-5)
        _close("proposal_logits (f16)", logits, golden["proposal_logits"].astype(np.float32), 1e-3)
        _rel("proposal_logits_sum", logits.astype(np.float64).sum(), golden["proposal_logits_sum"])
        _rel("proposal_logits_sumsq", (logits.astype(np.float64) ** 2).sum(), golden["proposal_logits_sumsq"])
        ref_mask = np.unpackbits(golden["occupied_packbits"]).astype(bool).reshape(logits.shape)
        flips = (logits > 0) != ref_mask
        assert np.all(np.abs(logits[flips]) < 1e-4), "occupancy differs where |logit| >= 1e-4"
        _close("ser_high_v0", inter["ser_high"][0], golden["ser_high_v0"], 1e-4)

        # reconstruction from the stored token list (3000 real anchors + zero padding)
        inter = {}
        anchors = torch.from_numpy(golden["anchor_xyz"])[None]
        g = model.reconstruct(images, c2w, K, anchors=anchors, resize=False, intermediates=inter)
        t3 = time.perf_counter()
    _close("plucker_v0", inter["lrm_plucker"][0], golden["plucker_v0"], 1e-4)
    _close("lrm_dino_v0", inter["lrm_dino"][0], golden["lrm_dino_v0"], 1e-4)
    _close("lrm_high_v0", inter["lrm_high"][0], golden["lrm_high_v0"], 1e-4)
    _close("lrm_low_v0", inter["lrm_low"][0], golden["lrm_low_v0"], 1e-4)
    _close("ref_uv_first16", inter["ref_uv"][0, :, :16], golden["ref_uv_first16"], 1e-4)
    _close("lrm_layer0_first", inter["layer0"][0, :256], golden["lrm_layer0_first"], 1e-4)
    lat = inter["latents"][0].double()
    _close("latents_first", lat[:256], golden["latents_first"], 1e-4)
    _close("latents_pad", lat[-256:], golden["latents_pad"], 1e-4)
    _rel("latents_sum", lat.sum(), golden["latents_sum"])
    _rel("latents_sumsq", (lat**2).sum(), golden["latents_sumsq"])
    flat = torch.cat([g.means[0], g.opacities[0, :, None], g.scales[0], g.quats[0], g.colors[0]], -1).double()
    assert flat.shape == (8192 * 32, 14)
    _close("gaussians_first", flat[:8192], golden["gaussians_first"], 1e-4)
    _close("gaussians_pad", flat[-8192:], golden["gaussians_pad"], 1e-4)
    _rel("gaussians_sum", flat.sum(), golden["gaussians_sum"])
    _rel("gaussians_sumsq", (flat**2).sum(), golden["gaussians_sumsq"])
    ch = flat.sum(0).numpy()
    np.testing.assert_allclose(ch, golden["gaussians_channel_sum"], rtol=1e-5)
    print(f"load {t1 - t0:.1f}s, proposal {t2 - t1:.1f}s, reconstruction {t3 - t2:.1f}s")
