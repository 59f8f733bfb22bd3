"""``geolrm-bench reconstruct`` on a small rendered object (tiny preset, random weights)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import make_box_mesh

from geolrm_bench.cli import main as cli_main
from geolrm_bench.errors import BenchError

RES = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def box_object(tmp_path_factory):
    """The coloured box rendered by the project's renderer into a GObjaverse folder (40 views, 32 px)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    try:
        from geolrm_bench.rendering import render_views, write_object_views
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"renderer unavailable: {e}")
    box = make_box_mesh()
    try:
        layers = render_views(box, resolution=RES)
    except Exception as e:  # pragma: no cover - no OSMesa on this machine
        pytest.skip(f"offscreen rendering unavailable: {type(e).__name__}: {e}")
    out = tmp_path_factory.mktemp("objects") / "box"
    write_object_views(layers, out)
    return out


def _run(args: list[str]) -> int:
    return cli_main(["reconstruct", *args])


def test_reconstruct_preset_tiny_writes_all_outputs(box_object, tmp_path, capsys):
    from geolrm_bench import gobjaverse
    from geolrm_bench.gobjaverse import read_png_rgba
    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM
    from geolrm_bench.model.ply import load_ply
    from geolrm_bench.model.rasterize import render_gaussians

    out = tmp_path / "rec"
    assert _run([str(box_object), "--preset", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "peak memory" in printed and str(out) in printed

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["input_views"] == [0, 6, 12, 18]
    assert meta["render_views"] == list(range(40)) and meta["render_resolution"] == [RES, RES]
    assert meta["model"]["kind"] == "random" and meta["cost"]["seconds"] > 0
    cfg = get_config("tiny")
    assert meta["num_gaussians"] == meta["num_tokens"] * cfg.gs_per_token
    assert 0 < meta["num_tokens"] <= cfg.max_tokens

    g = load_ply(out / "gaussians.ply")
    assert len(g) == meta["num_gaussians"]
    assert torch.all((g.opacities > 0) & (g.opacities < 1)) and torch.all(g.scales <= cfg.scale_max * 1.0001)

    # occupancy: the same seeded model's proposal on the same inputs, computed through the API
    occ = np.load(out / "occupancy.npy")
    assert occ.dtype == np.uint8 and occ.ndim == 2 and occ.shape[1] == 3
    torch.manual_seed(0)
    model = GeoLRM(get_config("tiny")).eval()
    vb = gobjaverse.load_views(box_object, views=[0, 6, 12, 18])
    with torch.no_grad():
        logits = model.propose(vb.images[None], vb.c2w_opengl[None], vb.intrinsics[None])
    np.testing.assert_array_equal(occ, (logits[0] > 0).nonzero().numpy())
    assert meta["occupancy"]["num_occupied"] == len(occ) and meta["occupancy"]["grid_res"] == cfg.grid_res

    # renders: 40 RGBA PNGs; composited on white they equal a white-background render of the .ply
    pngs = sorted((out / "renders").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(40)]
    views = gobjaverse.load_views(box_object, views=[3, 27])
    with torch.no_grad():
        ref = render_gaussians(g, views.c2w_opengl, views.intrinsics, RES, RES, background=(1, 1, 1))
    for k, v in enumerate((3, 27)):
        rgba = read_png_rgba(out / "renders" / f"{v:05d}.png")
        assert rgba.shape == (RES, RES, 4)
        on_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        np.testing.assert_allclose(on_white, ref["rgb"][k].permute(1, 2, 0).numpy(), atol=2.5 / 255)
        np.testing.assert_allclose(rgba[..., 3], ref["alpha"][k, 0].numpy(), atol=0.6 / 255)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_reconstruct_from_saved_folder_matches_preset_and_respects_token_cap(box_object, tmp_path):
    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM
    from geolrm_bench.model.ply import load_ply

    torch.manual_seed(0)  # the same weights the CLI draws for --preset tiny --seed 0
    GeoLRM(get_config("tiny")).save_pretrained(tmp_path / "weights")
    args = [str(box_object), "--input-views", "0,12", "--max-tokens", "50", "--render-views", "5",
            "--resolution", "24"]
    assert _run([*args, "--checkpoint", str(tmp_path / "weights"), "--out", str(tmp_path / "a")]) == 0
    assert _run([*args, "--preset", "tiny", "--out", str(tmp_path / "b")]) == 0
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["model"]["kind"] == "pretrained" and meta["num_tokens"] == 50
    assert meta["input_views"] == [0, 12] and meta["render_views"] == [5]
    assert [p.name for p in (tmp_path / "a" / "renders").iterdir()] == ["00005.png"]
    a, b = load_ply(tmp_path / "a" / "gaussians.ply"), load_ply(tmp_path / "b" / "gaussians.ply")
    assert len(a) == 50 * get_config("tiny").gs_per_token
    for k in ("means", "opacities", "scales", "colors"):
        torch.testing.assert_close(a.as_dict()[k], b.as_dict()[k])


def test_reconstruct_user_errors_are_one_line(box_object, tmp_path, capsys, monkeypatch):
    assert _run([str(tmp_path / "missing"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and "not found" in err and "\n" not in err
    assert _run([str(box_object), "--preset", "tiny", "--input-views", "0,99"]) == 2
    assert "--input-views" in capsys.readouterr().err
    assert _run([str(box_object), "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: at most one of --checkpoint / --preset
        _run([str(box_object), "--preset", "tiny", "--checkpoint", "x.ckpt"])
    capsys.readouterr()
    # neither: the bundled model; when it is missing, one line saying how to get a model (issue 12)
    from geolrm_bench.model import weights

    monkeypatch.setattr(weights, "BUNDLED", tmp_path / "no-bundled-model")
    assert _run([str(box_object), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no bundled model" in err and "make train-bundled" in err and "\n" not in err


def test_load_model_needs_a_source(tmp_path, monkeypatch):
    from geolrm_bench.commands.reconstruct import load_model
    from geolrm_bench.model import weights

    monkeypatch.setattr(weights, "BUNDLED", tmp_path / "no-bundled-model")
    with pytest.raises(BenchError, match="--checkpoint CKPT, or --preset tiny"):
        load_model(None, None)
