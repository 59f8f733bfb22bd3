"""Issue 12, deliverables 4-6: the bundled model as the default (and a one-line error when it is
missing), the baselines' rows in every report (the nearest-input-view baseline checked on
cameras whose answer is known analytically) and the qualitative pictures' layout."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import trimesh  # noqa: E402

from geolrm_bench import datasets, pictures, rendering  # noqa: E402
from geolrm_bench.cli import main as cli  # noqa: E402
from geolrm_bench.errors import BenchError  # noqa: E402
from geolrm_bench.methods import nearest_view_indices, resolve_model_source  # noqa: E402
from geolrm_bench.model import weights  # noqa: E402

RES = 64


def _ring(deg, radius=2.0, z=0.0) -> np.ndarray:
    a = np.radians(np.asarray(deg, float))
    return np.stack([radius * np.cos(a), radius * np.sin(a), np.full_like(a, z)], 1)


def test_nearest_view_picks_the_closest_direction():
    inputs = _ring([0, 60, 120, 180, 240, 300])
    # 28 deg -> 0 (28 < 32 away from 60); 35 -> 60; 170 -> 180; 359 -> 0 (wraps); 275 -> 300
    tests = _ring([28, 35, 170, 359, 275])
    assert nearest_view_indices(tests, inputs).tolist() == [0, 1, 3, 0, 5]
    # direction, not distance: an input at 10 deg far away beats one at 40 deg close by
    far_close = np.concatenate([_ring([10], radius=9.0), _ring([40], radius=0.5)])
    assert nearest_view_indices(_ring([22]), far_close).tolist() == [0]
    # elevation counts: from above, the high camera at 90 deg azimuth is nearer than the ring one at 0
    ins = np.concatenate([_ring([0]), _ring([90], radius=1.0, z=1.7)])
    top = np.array([[0.0, 0.5, 2.0]])
    assert nearest_view_indices(top, ins).tolist() == [1]
    # about another centre: translating everything leaves the answer unchanged
    c = np.array([0.3, -0.2, 0.1])
    assert nearest_view_indices(tests + c, inputs + c, centre=c).tolist() == [0, 1, 3, 0, 5]


def test_object_grid_layout_and_content():
    rng = np.random.default_rng(0)
    n, t, h = 6, 4, 32
    inputs, gt = rng.random((n, 3, h, h)), rng.random((t, 3, h, h))
    pred = np.clip(gt + 0.1, 0, 1)
    grid = pictures.object_grid(inputs, gt, pred, tile=h)
    assert grid.shape == (4 * h, pictures.LABEL_W + max(n, t) * h, 3)
    assert pictures.grid_size(n, t, h) == (grid.shape[1], grid.shape[0])
    tiles = pictures.grid_tiles(grid, n, t, h)
    u8 = lambda x: np.round(np.clip(x.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)  # noqa: E731
    assert np.array_equal(tiles[0], u8(inputs[0])) and np.array_equal(tiles[n + 1], u8(gt[1]))
    assert np.array_equal(tiles[n + t + 2], u8(pred[2]))
    err = np.minimum(1, pictures.ERROR_GAIN * np.abs(pred[3] - gt[3]).mean(0))  # by hand
    assert np.abs(tiles[n + 3 * t - 1][..., 0].astype(float) - np.round(err * 255)).max() <= 1
    # row 2, column 5 (past the 4 test views): an empty white cell
    x = pictures.LABEL_W + 5 * h
    assert (grid[h:2 * h, x:x + h] == 255).all()


def test_describe_from_provenance(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"name": "tiny"}))
    (tmp_path / "provenance.json").write_text(json.dumps(
        {"name": "tiny-zeroverse", "procedural_objects": 900, "real_objects": 12, "steps_stage1": 1500,
         "steps_stage2": 400, "device": "CPU", "wall_minutes": 84.6}))
    text = weights.describe(tmp_path)
    assert text == ("Bundled GeoLRM tiny-zeroverse (tiny preset), trained on 900 procedural + 12 real "
                    "objects for 1500 + 400 steps on CPU in 85 min; not the paper's model")
    (tmp_path / "provenance.json").unlink()
    text = weights.describe(tmp_path)
    assert "TRAINING.md" in text and "not the paper's model" in text


def test_missing_bundled_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights, "BUNDLED", tmp_path / "absent")
    with pytest.raises(BenchError, match="make train-bundled") as e:
        resolve_model_source(None, None)
    assert "\n" not in str(e.value) and "--preset tiny" in str(e.value)
    assert resolve_model_source(None, "tiny") == (None, "tiny")  # an explicit preset: random weights
    assert resolve_model_source("x.ckpt", None) == ("x.ckpt", None)
    assert resolve_model_source(None, None, "preds") == (None, None)  # another method: no model
    assert cli(["eval", "--dataset", str(tmp_path), "--local", "--quiet"]) == 2
    assert "make train-bundled" in capsys.readouterr().err
    assert cli(["reconstruct", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no bundled model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fake_bundled(tmp_path_factory) -> Path:
    """A random tiny model saved like the bundled one, with a provenance.json."""
    import torch

    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM

    folder = tmp_path_factory.mktemp("weights") / "tiny-zeroverse"
    torch.manual_seed(123)
    GeoLRM(get_config("tiny")).save_pretrained(folder)
    (folder / "provenance.json").write_text(json.dumps(
        {"name": "tiny-zeroverse", "procedural_objects": 7, "real_objects": 0, "steps_stage1": 11,
         "steps_stage2": 3, "device": "CPU", "wall_minutes": 1.0, "git_commit": "abc"}))
    return folder


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meshes")
    box = trimesh.creation.box(extents=(0.3, 0.2, 0.15))
    c = (box.vertices - box.vertices.min(0)) / np.ptp(box.vertices, 0)
    box.visual.vertex_colors = np.c_[(40 + c * 200).astype(np.uint8), np.full(len(c), 255, np.uint8)]
    box.export(root / "box.ply")
    out = tmp_path_factory.mktemp("renders")
    for ref in datasets.list_objects("meshes", root):
        rendering.render_object(ref.load(), out, resolution=RES)
    return out


def test_default_is_bundled_with_baselines_and_pictures(fake_bundled, renders, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "BUNDLED", fake_bundled)
    run = tmp_path / "run"
    assert cli(["eval", "--dataset", str(renders), "--resolution", str(RES), "--max-tokens", "64",
                "--out", str(run), "--local", "--quiet"]) == 0
    s = pd.read_csv(run / "summary.csv")
    assert list(s["method"]) == ["GeoLRM-bundled", "baseline: random weights (tiny)",
                                 "baseline: nearest input view"]
    assert list(s["role"]) == ["model", "baseline", "baseline"]
    assert list(s["checkpoint_kind"]) == ["bundled", "random", "baseline"]
    assert (s["num_objects"] == 1).all()
    assert math.isnan(s.loc[2, "chamfer"]) and np.isfinite(s.loc[1, "chamfer"])  # nearest view: no geometry
    config = json.loads((run / "config.json").read_text())
    assert config["checkpoint_kind"] == "bundled" and Path(config["checkpoint"]) == fake_bundled
    md = (run / "summary.md").read_text()
    assert md.startswith("> **Bundled GeoLRM tiny-zeroverse (tiny preset), trained on 7 procedural + 0 real "
                         "objects for 11 + 3 steps on CPU")
    assert "NOT THE PAPER'S MODEL" not in md and "baseline: nearest input view" in md
    # the nearest-view baseline scores its own images: recompute its PSNR independently
    b = json.loads((run / "baselines" / "nearest-view" / "objects" / "box.json").read_text())
    from geolrm_bench import gobjaverse

    obj = renders / "box"
    vt = gobjaverse.load_views(obj, views=[28, 31, 34, 37], resolution=RES).images.double().numpy()
    vin = gobjaverse.load_views(obj, views=[0, 4, 8, 12, 16, 20], resolution=RES)
    c_t, _, _ = gobjaverse.load_cameras(obj, [28, 31, 34, 37])
    pos_in = vin.c2w_opengl[:, :3, 3].double().numpy()
    pick = [int(np.argmax([np.dot(p / np.linalg.norm(p), q / np.linalg.norm(q)) for q in pos_in]))
            for p in c_t[:, :3, 3].astype(float)]
    imgs = vin.images.double().numpy()[pick]
    psnr = [10 * np.log10(1 / np.mean((imgs[i] - vt[i]) ** 2)) for i in range(4)]
    assert [v["psnr"] for v in b["views"]] == pytest.approx(psnr, abs=1e-3)
    # pictures: per-object grid and overview, sizes from the layout, linked from summary.md
    from PIL import Image

    with Image.open(run / "pictures" / "box.png") as im:
        assert im.size == pictures.grid_size(6, 4, min(pictures.TILE, RES))
    with Image.open(run / "overview.png") as im:
        assert im.size == pictures.overview_size(1, 6, 4)
    assert "](pictures/box.png)" in md and "](overview.png)" in md
    # stage breakdown in per_object.csv
    po = pd.read_csv(run / "per_object.csv")
    for col in ("load_s", "raster_s", "image_metrics_s", "geometry_s", "picture_s", "lpips_s"):
        assert np.isfinite(po.loc[0, col]) and po.loc[0, col] >= 0, col
    # --no-baselines: the model's row alone
    run2 = tmp_path / "run2"
    assert cli(["eval", "--dataset", str(renders), "--preset", "tiny", "--resolution", str(RES),
                "--max-tokens", "64", "--out", str(run2), "--local", "--quiet", "--no-baselines",
                "--no-pictures"]) == 0
    assert list(pd.read_csv(run2 / "summary.csv")["method"]) == ["GeoLRM-tiny"]
    assert not (run2 / "pictures").exists() and not (run2 / "baselines").exists()
