"""``geolrm-bench metrics images|geometry`` on tiny files written by the tests."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from geolrm_bench.cli import main
from geolrm_bench.commands.metrics import read_png_rgb
from geolrm_bench.model.gaussians import Gaussians


def _save_png(path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent -> white
    rgba[1, 0] = (0, 0, 0, 51)  # 20 % black over white -> 0.8
    _save_png(tmp_path / "a.png", rgba)
    rgb = read_png_rgb(tmp_path / "a.png")
    np.testing.assert_allclose(rgb[:, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(rgb[:, 0, 1], [1, 1, 1])
    np.testing.assert_allclose(rgb[:, 1, 0], [0.8, 0.8, 0.8], atol=1e-6)


def test_images_command_psnr_by_hand_and_missing_pairs(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    base = np.full((16, 16, 3), 100, np.uint8)
    _save_png(gt / "obj" / "00000.png", base)
    _save_png(pred / "obj" / "00000.png", base + 10)  # constant offset 10/255
    _save_png(gt / "obj" / "00001.png", base)
    _save_png(pred / "obj" / "00001.png", base)  # identical
    _save_png(pred / "extra.png", base)  # no GT
    _save_png(gt / "only_gt.png", base)  # no prediction
    out = tmp_path / "m.csv"
    rc = main(["metrics", "images", str(pred), str(gt), "--lpips-net", "none", "--out", str(out), "--quiet"])
    assert rc == 1  # some files could not be scored; the rest were, and the CSV was written
    captured = capsys.readouterr()
    assert "missing in GT: extra.png" in captured.err and "missing in prediction: only_gt.png" in captured.err
    rows = _read_csv(out)
    assert [r["name"] for r in rows] == ["obj/00000.png", "obj/00001.png"]
    assert list(rows[0]) == ["name", "psnr", "ssim", "lpips"]
    assert float(rows[0]["psnr"]) == pytest.approx(20 * math.log10(255 / 10), abs=1e-3)
    assert math.isinf(float(rows[1]["psnr"])) and float(rows[1]["ssim"]) == pytest.approx(1.0)


def test_images_command_with_lpips_alex(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _save_png(gt / "x.png", img)
    _save_png(pred / "x.png", img)
    out = tmp_path / "m.csv"
    assert main(["metrics", "images", str(pred), str(gt), "--lpips-net", "alex", "--out", str(out),
                 "--quiet"]) == 0
    assert float(_read_csv(out)[0]["lpips"]) == pytest.approx(0.0, abs=1e-6)


def test_images_command_errors(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _save_png(gt / "a.png", np.zeros((16, 16, 3), np.uint8))
    _save_png(pred / "a.png", np.zeros((16, 20, 3), np.uint8))
    assert main(["metrics", "images", str(pred), str(gt), "--lpips-net", "none", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a.png" in err and "differs" in err and len(err.splitlines()) == 1
    assert main(["metrics", "images", str(tmp_path / "nope"), str(gt), "--quiet"]) == 2
    assert "folder not found" in capsys.readouterr().err
    (pred / "a.png").write_bytes(b"not a png")
    assert main(["metrics", "images", str(pred), str(gt), "--lpips-net", "none", "--quiet"]) == 2
    assert "unreadable image" in capsys.readouterr().err


def test_geometry_command_mesh_vs_mesh(tmp_path):
    # Two concentric spheres, radii 1.0 and 1.1: every nearest distance is ~0.1
    # (the mesh is a polyhedron: within 1e-2 at 4 subdivisions), so Chamfer ~ 0.1,
    # F-score 1 at tau 0.2 and 0 at tau 0.05.
    trimesh.creation.icosphere(subdivisions=4, radius=1.1).export(tmp_path / "pred.obj")
    trimesh.creation.icosphere(subdivisions=4, radius=1.0).export(tmp_path / "gt.obj")
    out = tmp_path / "g.csv"
    rc = main(["metrics", "geometry", str(tmp_path / "pred.obj"), str(tmp_path / "gt.obj"),
               "--tau", "0.05", "0.2", "--num-points", "4000", "--out", str(out)])
    assert rc == 0
    rows = _read_csv(out)
    assert list(rows[0]) == ["name", "chamfer", "fscore@0.05", "fscore@0.2"]
    assert rows[0]["name"] == "pred.obj"
    assert float(rows[0]["chamfer"]) == pytest.approx(0.1, abs=0.01)
    assert float(rows[0]["fscore@0.2"]) == 1.0 and float(rows[0]["fscore@0.05"]) == 0.0


def test_geometry_command_gaussian_ply(tmp_path, capsys):
    from geolrm_bench.model.ply import save_ply

    # Gaussians exactly on the GT sphere's surface samples, plus transparent outliers
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    sphere.export(tmp_path / "gt.ply")
    pts = np.asarray(sphere.vertices)
    far = pts * 3.0
    means = np.concatenate([pts, far])
    opac = np.concatenate([np.full(len(pts), 0.9), np.full(len(far), 0.01)])
    n = len(means)
    g = Gaussians(means=torch.from_numpy(means).float(), opacities=torch.from_numpy(opac).float(),
                  scales=torch.full((n, 3), 0.01), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                  colors=torch.full((n, 3), 0.5))
    save_ply(tmp_path / "pred.ply", g)
    out = tmp_path / "g.csv"
    assert main(["metrics", "geometry", str(tmp_path / "pred.ply"), str(tmp_path / "gt.ply"),
                 "--num-points", "20000", "--out", str(out)]) == 0
    assert "Gaussian centres" in capsys.readouterr().out
    row = _read_csv(out)[0]
    # outliers at radius 1.5 would add ~1.0 to the mean distance: they must be filtered
    assert float(row["chamfer"]) < 0.02 and float(row["fscore@0.2"]) == 1.0


def test_geometry_command_errors(tmp_path, capsys):
    trimesh.creation.box().export(tmp_path / "gt.obj")
    assert main(["metrics", "geometry", str(tmp_path / "missing.ply"), str(tmp_path / "gt.obj")]) == 2
    err = capsys.readouterr().err
    assert "missing.ply" in err and "not found" in err
    np.save(tmp_path / "nan.npy", np.full((5, 3), np.nan))
    assert main(["metrics", "geometry", str(tmp_path / "nan.npy"), str(tmp_path / "gt.obj")]) == 2
    assert "NaN" in capsys.readouterr().err
    (tmp_path / "junk.obj").write_text("this is not an obj\n")
    assert main(["metrics", "geometry", str(tmp_path / "junk.obj"), str(tmp_path / "gt.obj")]) == 2
    err = capsys.readouterr().err.strip()
    assert "junk.obj" in err and len(err.splitlines()) == 1
