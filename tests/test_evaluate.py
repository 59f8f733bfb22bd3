"""End-to-end evaluation: Ray run with the tiny preset, resume, report numbers recomputed
independently with pandas/numpy/scipy, and the method-agnostic path (a ground-truth-derived
prediction must beat a random one; a translated mesh has Chamfer <= its translation; PNG
predictions score the PSNR computed by hand)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import trimesh  # noqa: E402

# the order of torchvision/triton and the first OSMesa render is free: geolrm_bench.rendering
# preloads triton's library before OpenGL (see rendering._preload_llvm_users)
from geolrm_bench import datasets, rendering  # noqa: E402
from geolrm_bench.cli import main as cli  # noqa: E402

RES = 64  # render / evaluation resolution of these tests
TEST_VIEWS = [28, 31, 34, 37]


def _make_meshes(root: Path) -> Path:
    """Two small coloured meshes in a made-up GT frame (not normalised, off-centre)."""
    root.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box(extents=(0.2, 0.1, 0.15))
    box.apply_translation((0.3, -0.1, 0.075))
    box.visual.face_colors = np.tile([200, 40, 40, 255], (len(box.faces), 1))
    box.export(root / "box.ply")
    ball = trimesh.creation.icosphere(subdivisions=2, radius=0.08)
    c = (ball.vertices - ball.vertices.min(0)) / np.ptp(ball.vertices, 0)
    ball.visual.vertex_colors = np.c_[(40 + c * 200).astype(np.uint8), np.full(len(c), 255, np.uint8)]
    ball.export(root / "ball.ply")
    return root


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> Path:
    return _make_meshes(tmp_path_factory.mktemp("meshes"))


@pytest.fixture(scope="module")
def renders(meshes, tmp_path_factory) -> Path:
    """The two meshes rendered once in the GObjaverse format (reused by several tests)."""

    out = tmp_path_factory.mktemp("renders")
    for ref in datasets.list_objects("meshes", meshes):
        rendering.render_object(ref.load(), out, resolution=RES)
    return out


def _read(run: Path):
    return (pd.read_csv(run / "per_view.csv"), pd.read_csv(run / "per_object.csv"),
            pd.read_csv(run / "summary.csv"), json.loads((run / "config.json").read_text()))


def test_end_to_end_tiny_ray_then_resume(meshes, tmp_path):
    # a third, broken object: recorded as failed, not fatal
    broken = tmp_path / "ds"
    broken.mkdir()
    for p in meshes.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "broken.obj").write_text("this is not a mesh\n")
    run = tmp_path / "run"
    args = ["eval", "--dataset", "meshes", "--root", str(broken), "--preset", "tiny", "--input-views", "6",
            "--resolution", str(RES), "--max-tokens", "128", "--out", str(run), "--quiet"]
    assert cli([*args, "--num-cpus", "2"]) == 1  # exit 1: some objects failed, report written
    per_view, per_object, summary, config = _read(run)

    assert set(per_object["object"]) == {"ball", "box", "broken"}
    st = per_object.set_index("object")["status"]
    assert st["ball"] == "ok" and st["box"] == "ok" and st["broken"] == "failed"
    assert isinstance(per_object.set_index("object")["error"]["broken"], str)
    # every number of the summary = an independent recomputation from per_object.csv
    ok = per_object[per_object["status"] == "ok"]
    row = summary.iloc[0]
    assert row["num_objects"] == 2 and row["num_failed"] == 1 and row["num_input_views"] == 6
    for m in ("psnr", "ssim", "lpips", "chamfer", "fscore", "inference_s", "memory_gb"):
        x = ok[m].to_numpy(float)
        assert np.isfinite(x).all(), m
        assert row[m] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12), m
        sem = stats.sem(x)
        lo_hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sem) if sem > 0 else (0.0, 0.0)
        half = (lo_hi[1] - lo_hi[0]) / 2
        assert row[f"{m}_ci95"] == pytest.approx(half, rel=1e-6, abs=1e-12), m
    # per-object image metrics = mean of its per-view rows; 4 test views each
    pv = per_view.groupby("object")[["psnr", "ssim", "lpips"]].mean()
    for _, r in ok.iterrows():
        for m in ("psnr", "ssim", "lpips"):
            assert pv.loc[r["object"], m] == pytest.approx(r[m], rel=1e-9)
    assert sorted(per_view["view"].unique()) == TEST_VIEWS
    assert (ok["inference_s"] > 0).all() and (ok["memory_gb"] > 0).all()
    # provenance and the random-weights flag
    assert config["input_views"] == [0, 4, 8, 12, 16, 20] and config["test_views"] == TEST_VIEWS
    assert config["checkpoint_kind"] == "random" and config["not_paper_model"] is True
    assert bool(summary["not_paper_model"].iloc[0]) and not bool(summary["paper_model"].iloc[0])
    md = (run / "summary.md").read_text()
    assert md.startswith("> **NOT THE PAPER'S MODEL**") and "28, 31, 34, 37" in md
    # only the views the protocol reads were rendered (6 inputs + 4 test views of the 40)
    rmeta = json.loads((run / "renders" / "ball" / "metadata.json").read_text())
    assert rmeta["views"] == [0, 4, 8, 12, 16, 20, *TEST_VIEWS]
    assert (run / "renders" / "ball" / "00037" / "00037.png").exists()
    assert not (run / "renders" / "ball" / "00039").exists()

    # resume: delete one object's record; only it (and the failed one) is redone
    keep = run / "objects" / "box.json"
    before = (keep.read_bytes(), keep.stat().st_mtime_ns)
    (run / "objects" / "ball.json").unlink()
    old = per_object.set_index("object")
    assert cli([*args, "--local"]) == 1  # same run folder, in-process this time; broken still fails
    assert (keep.read_bytes(), keep.stat().st_mtime_ns) == before
    _, again, _, _ = _read(run)
    again = again.set_index("object")
    assert again.loc["ball", "status"] == "ok"
    # same seed -> same random weights and the same renders: image metrics reproduce
    assert again.loc["ball", "psnr"] == pytest.approx(old.loc["ball", "psnr"], abs=1e-4)


def _write_3dgs_ply(path: Path, means, colors, scales, opacities) -> None:
    """A standard 3DGS binary .ply written by hand (inverse activations)."""
    n = len(means)
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
             + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    data = np.zeros(n, dtype=[(k, "<f4") for k in names])
    for i, k in enumerate("xyz"):
        data[k] = means[:, i]
    for i in range(3):
        data[f"f_dc_{i}"] = (colors[:, i] - 0.5) / 0.28209479177387814
        data[f"scale_{i}"] = np.log(scales[:, i])
    data["opacity"] = np.log(opacities / (1 - opacities))
    data["rot_0"] = 1.0
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n" + "".join(
        f"property float {k}\n" for k in names) + "end_header\n"
    path.write_bytes(header.encode("ascii") + data.tobytes())


def _normalised_mesh(mesh_path: Path):

    return datasets.load_mesh_file(mesh_path)


@pytest.mark.slow  # ~10-30 s: the CPU rasterizer renders 2 x 2500 Gaussians
def test_predictions_gt_derived_beats_random(meshes, renders, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    rng = np.random.default_rng(0)
    n = 2500
    for name in ("ball",):
        asset = _normalised_mesh(meshes / f"{name}.ply")
        pts, face, cols = trimesh.sample.sample_surface(asset.mesh, n, sample_color=True, seed=1)
        cols = np.asarray(cols, np.float64)[:, :3] / 255.0
        (good / name).mkdir(parents=True)
        _write_3dgs_ply(good / name / "gaussians.ply", np.asarray(pts), cols, np.full((n, 3), 0.01),
                        np.full(n, 0.95))
        (bad / name).mkdir(parents=True)
        _write_3dgs_ply(bad / name / "gaussians.ply", rng.uniform(-0.5, 0.5, (n, 3)),
                        rng.uniform(0, 1, (n, 3)), np.full((n, 3), 0.01), np.full(n, 0.95))
    res = {}
    for label, folder in (("good", good), ("bad", bad)):
        run = tmp_path / f"run-{label}"
        assert cli(["eval", "--dataset", str(renders), "--predictions", str(folder), "--method", label,
                    "--resolution", str(RES), "--out", str(run), "--local", "--quiet"]) == 1  # box fails
        res[label] = _read(run)
    g, b = res["good"][2].iloc[0], res["bad"][2].iloc[0]
    assert g["method"] == "good" and res["good"][3]["checkpoint_kind"] == "external"
    assert g["num_objects"] == 1 and b["num_objects"] == 1 and g["num_failed"] == 1
    err = res["good"][1].set_index("object").loc["box", "error"]
    assert "no predictions for object 'box'" in err
    assert g["psnr"] > b["psnr"] + 5
    assert g["ssim"] > b["ssim"] + 0.1
    assert g["lpips"] < b["lpips"]
    assert g["chamfer_unitbox"] < 0.02 < b["chamfer_unitbox"]
    assert g["chamfer_m"] < b["chamfer_m"] / 5
    assert g["chamfer"] == pytest.approx(2 * g["chamfer_unitbox"], rel=1e-6)  # headline: [-1, 1]^3
    assert g["fscore_unitbox"] >= b["fscore_unitbox"]
    assert not (res["good"][0].empty or res["bad"][0].empty)


def test_predictions_mesh_and_png(meshes, renders, tmp_path):
    from PIL import Image

    pred = tmp_path / "pred"
    t = np.array([0.02, 0.0, 0.0])  # translation in the normalised frame
    box = _normalised_mesh(meshes / "box.ply")
    (pred / "box").mkdir(parents=True)
    moved = box.mesh.copy()
    moved.apply_translation(t)
    moved.export(pred / "box" / "mesh.ply")
    # ball: the ground-truth test views darkened by 20%: PSNR computed here by hand
    (pred / "ball").mkdir(parents=True)
    expect = []
    for v in TEST_VIEWS:
        png = renders / "ball" / f"{v:05d}" / f"{v:05d}.png"
        a = np.asarray(Image.open(png).convert("RGBA"), np.float64) / 255
        gt = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
        dark = np.round(gt * 0.8 * 255).astype(np.uint8)
        Image.fromarray(dark, "RGB").save(pred / "ball" / f"{v:05d}.png")
        mse = np.mean((dark / 255.0 - gt) ** 2)
        expect.append(10 * math.log10(1 / mse))
    run = tmp_path / "run"
    assert cli(["eval", "--dataset", str(renders), "--predictions", str(pred), "--resolution", str(RES),
                "--out", str(run), "--local", "--quiet"]) == 0
    per_view, per_object, summary, _ = _read(run)
    po = per_object.set_index("object")
    assert (po["status"] == "ok").all()
    got = per_view[per_view["object"] == "ball"].sort_values("view")["psnr"].to_numpy()
    np.testing.assert_allclose(got, expect, atol=2e-3)
    assert np.isnan(po.loc["ball", "chamfer"])  # PNGs carry no geometry
    # a rigid translation by |t| moves every point by |t|: Chamfer <= |t| (normalised frame);
    # in the GT frame distances scale by 1 / s, s = the normalising scale
    cn = po.loc["box", "chamfer_unitbox"]
    assert 0 < cn <= np.linalg.norm(t) + 2e-3
    s = abs(np.linalg.det(box.to_normalized[:3, :3])) ** (1 / 3)
    assert po.loc["box", "chamfer_m"] == pytest.approx(cn / s, rel=0.05)
    assert po.loc["box", "chamfer"] == pytest.approx(2 * cn, rel=1e-6)  # the [-1, 1]^3 headline
    assert po.loc["box", "psnr"] > 15


@pytest.mark.slow
def test_sweep_views_two_n(renders, tmp_path):
    out = tmp_path / "sweep"
    assert cli(["sweep-views", "--dataset", str(renders), "--preset", "tiny", "--views", "4,8",
                "--resolution", str(RES), "--max-tokens", "128", "--limit", "1", "--out", str(out),
                "--local", "--quiet"]) == 0
    s = pd.read_csv(out / "summary.csv")
    # per N the model's row, then the reference row (random weights are the model here: nearest view only)
    assert list(s["method"]) == ["GeoLRM-tiny", "baseline: nearest input view"] * 2
    s = s[s["role"] == "model"]
    assert list(s["num_input_views"]) == [4, 8]
    for n in (4, 8):
        c = json.loads((out / f"n{n}" / "config.json").read_text())
        assert c["test_views"] == TEST_VIEWS
        po = pd.read_csv(out / f"n{n}" / "per_object.csv")
        assert s.set_index("num_input_views").loc[n, "psnr"] == pytest.approx(po["psnr"].mean())
    assert json.loads((out / "n4" / "config.json").read_text())["input_views"] == [0, 6, 12, 18]
    for p in ("psnr_vs_views.png", "ssim_vs_views.png", "time_memory_vs_views.png", "summary.md"):
        assert (out / p).exists()
    assert not (out / "renders").exists()  # the dataset was already renders: reused, not copied


def test_render_cache_policy(tmp_path):
    """What prepare_object renders, from a cached render's metadata.json: nothing when it has
    the protocol's views at its resolution, the protocol's views when there is no usable render,
    all 40 when a render at this resolution lacks some (the next N of a sweep)."""
    from geolrm_bench.evaluation import _views_to_render
    from geolrm_bench.protocol import Protocol

    p6 = Protocol(num_input_views=6, resolution=RES)
    used = [0, 4, 8, 12, 16, 20, 28, 31, 34, 37]
    assert p6.used_views == used
    obj = tmp_path / "obj"
    assert _views_to_render(obj, p6) == used  # absent
    obj.mkdir()
    (obj / "metadata.json").write_text("{not json")
    assert _views_to_render(obj, p6) == used  # unreadable
    (obj / "metadata.json").write_text(json.dumps({"resolution": 2 * RES, "views": list(range(40))}))
    assert _views_to_render(obj, p6) == used  # another resolution
    (obj / "metadata.json").write_text(json.dumps({"resolution": RES, "views": used}))
    assert _views_to_render(obj, p6) == []  # exactly these views
    assert _views_to_render(obj, Protocol(input_views=[0, 8, 16], resolution=RES)) == []  # a subset
    p4 = Protocol(num_input_views=4, resolution=RES)  # inputs 0, 6, 12, 18: 6 and 18 not cached
    assert _views_to_render(obj, p4) is None  # -> all 40 once
    (obj / "metadata.json").write_text(json.dumps({"resolution": RES, "views": list(range(40))}))
    assert _views_to_render(obj, p4) == []


def test_stale_records_are_redone(tmp_path):
    from geolrm_bench.pipelines.evaluate import EvalConfig, finished, run_key

    a = EvalConfig(preset="tiny", resolution=64)
    k = run_key(a, a.protocol())
    assert k == run_key(EvalConfig(preset="tiny", resolution=64, limit=5), a.protocol())  # limit: same
    b = EvalConfig(preset="tiny", resolution=128)
    assert run_key(b, b.protocol()) != k
    c = EvalConfig(preset="tiny", resolution=64, test_views=[27, 30])
    assert run_key(c, c.protocol()) != k
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"status": "ok", "run_key": k}))
    assert finished(p, k) and not finished(p, "other")
    p.write_text(json.dumps({"status": "failed", "run_key": k}))
    assert not finished(p, k)
    p.write_text("{broken")
    assert not finished(p, k)


def test_replaced_checkpoint_changes_the_resume_key(tmp_path):
    """Records made with one checkpoint must not be reused after the file at the same path changes."""
    from geolrm_bench.pipelines.evaluate import EvalConfig, run_key

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights v1")
    a = EvalConfig(checkpoint=str(ckpt), resolution=64)
    k1 = run_key(a, a.protocol())
    assert run_key(a, a.protocol()) == k1  # stable while the file is unchanged
    ckpt.write_bytes(b"weights v2, retrained")
    assert run_key(a, a.protocol()) != k1
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"v1")
    b = EvalConfig(checkpoint=str(folder), resolution=64)
    k2 = run_key(b, b.protocol())
    (folder / "model.safetensors").write_bytes(b"v2 longer")
    assert run_key(b, b.protocol()) != k2


def test_eval_and_sweep_help_document_every_option():
    """Issue 6: ``geolrm-bench eval --help`` documents every option (sweep-views likewise)."""
    import argparse

    from geolrm_bench.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("eval", "sweep-views"):
        undocumented = [a.option_strings[0] for a in sub.choices[cmd]._actions
                        if a.option_strings and a.dest != "help" and not a.help]
        assert not undocumented, f"{cmd}: options without help: {undocumented}"
