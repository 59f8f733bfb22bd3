"""Procedural training objects (geolrm_bench.synth) and their pipeline (geolrm_bench.pipelines.synth).

References are independent of the generator: analytic shapes (sphere radius, cube faces,
torus tube distance, segment distances of wireframe tubes, a sphere carved from a cube
corner), OBJ files parsed here with numpy, and the geometry hashes stored by
``make data-sample`` in ``data/sample/index.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import trimesh

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from geolrm_bench import datasets, synth  # noqa: E402
from geolrm_bench.cli import main as cli_main  # noqa: E402
from geolrm_bench.pipelines import synth as pipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_INDEX = REPO / "data" / "sample" / "index.json"
IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def _files(folder: Path) -> dict[str, bytes]:
    """The object's files (hidden bookkeeping files such as the owner marker left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def _parse_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v [N, 3], vt [N, 2], faces [F, 3] 0-based) of an OBJ written as ``f a/a b/b c/c``."""
    v, vt, f = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:]])
        elif line.startswith("vt "):
            vt.append([float(x) for x in line.split()[1:]])
        elif line.startswith("f "):
            f.append([int(x.split("/")[0]) - 1 for x in line.split()[1:]])
    return np.array(v), np.array(vt), np.array(f)


def _prim(kind: str, **kw) -> dict:
    p = {"kind": kind, "scale": [1.0, 1.0, 1.0], "rotation": IDENTITY, "translation": [0.0, 0.0, 0.0],
         "texture": {"kind": "checkers", "cells": 4, "colours": [[0, 0, 0], [255, 255, 255]]},
         "height_field": None, "wireframe": None}
    if kind == "torus":
        p["minor"] = 0.1
    p.update(kw)
    return p


def _recipe(prims: list[dict], boolean: dict | None = None) -> dict:
    return {"generator": synth.GENERATOR, "version": synth.GENERATOR_VERSION, "seed": 0, "index": 0,
            "attempt": 0, "name": "hand", "config": asdict(synth.SynthConfig()),
            "primitives": prims, "boolean_difference": boolean, "augmentations": []}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """48 objects of seed 0 written by the generator (no Ray)."""
    root = tmp_path_factory.mktemp("synth")
    for i in range(48):
        synth.generate_object(0, i, root)
    return root


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_and_other_seeds_differ(tmp_path, batch):
    for i in (0, 1, 7):
        synth.generate_object(0, i, tmp_path / "again")
        a, b = _files(batch / synth.object_name(0, i)), _files(tmp_path / "again" / synth.object_name(0, i))
        assert set(a) == {"model.obj", "model.mtl", "texture.png", "meta.json"}
        assert a == b
    synth.generate_object(1, 0, tmp_path / "seed1")
    other = _files(tmp_path / "seed1" / synth.object_name(1, 0))
    first = _files(batch / synth.object_name(0, 0))
    assert other["model.obj"] != first["model.obj"] and other["texture.png"] != first["texture.png"]
    objs = {_files(batch / synth.object_name(0, i))["model.obj"] for i in range(48)}
    assert len(objs) == 48  # no two indices give the same object


# ----------------------------------------------------------------------------- validity
def test_batch_is_valid_and_covers_every_kind(batch):
    kinds, textures, augs = set(), set(), set()
    for name, folder in synth.list_synth(batch):
        v, vt, f = _parse_obj(folder / "model.obj")
        assert len(f) > 0 and len(v) == len(vt)
        assert np.isfinite(v).all() and np.isfinite(vt).all()
        assert np.abs(v).max() <= 0.5 + 1e-9  # inside the box (as written, %.6f)
        ext = v[np.unique(f)].max(0) - v[np.unique(f)].min(0)
        assert ext.max() == pytest.approx(1.0, abs=2e-6) and ext.min() >= synth.MIN_EXTENT
        assert (vt >= 0).all() and (vt <= 1).all()
        tex = np.asarray(trimesh.load(folder / "model.obj", force="mesh").visual.material.image)
        assert tex.std() > 1.0  # a real texture, not a flat colour
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["name"] == name and 1 <= len(meta["primitives"]) <= 9
        kinds |= {p["kind"] for p in meta["primitives"]}
        textures |= {p["texture"]["kind"] for p in meta["primitives"]}
        augs |= set(meta["augmentations"])
    assert kinds == set(synth.PRIMITIVES)
    assert textures == set(synth.TEXTURES)
    assert augs == set(synth.AUGMENTATIONS)


def test_primitives_match_their_analytic_shapes():
    """Local-frame shapes before any transform: exact surfaces, closed, wound outwards."""
    for kind in synth.PRIMITIVES:
        v, _, f = synth._solid_parts(_prim(kind), 24)
        m = trimesh.Trimesh(v, f)  # merges the patches' coincident seam vertices
        if kind == "sphere":
            np.testing.assert_allclose(np.linalg.norm(v, axis=1), 0.5, atol=1e-12)
        if kind == "cube":
            np.testing.assert_allclose(np.abs(v).max(axis=1), 0.5, atol=1e-12)
            assert m.volume == pytest.approx(1.0, abs=1e-9)
        if kind == "torus":
            ring = np.hypot(v[:, 0], v[:, 1])
            np.testing.assert_allclose(np.hypot(ring - 0.4, v[:, 2]), 0.1, atol=1e-12)
        if kind == "cylinder":
            assert m.volume == pytest.approx(np.pi * 0.25, rel=0.02)  # pi r^2 h, 24-gon
        if kind == "cone":
            assert m.volume == pytest.approx(np.pi * 0.25 / 3, rel=0.02)
        assert m.is_watertight, kind
        assert m.volume > 0, f"{kind} wound inwards"


def test_height_field_displaces_without_cracks():
    hf = {"seed": 3, "cells": 4, "amplitude": 0.08}
    v, _, f = synth._solid_parts(_prim("sphere", height_field=hf), 24)
    r = np.linalg.norm(v, axis=1)
    assert r.min() >= 0.5 - 0.08 - 1e-12 and r.max() <= 0.5 + 0.08 + 1e-12 and r.std() > 0.005
    assert trimesh.Trimesh(v, f).is_watertight  # seams moved together
    v, _, f = synth._solid_parts(_prim("cube", height_field=hf), 24)
    assert trimesh.Trimesh(v, f).is_watertight


def test_wireframe_cube_is_twelve_thin_tubes():
    wf = {"segments": 4, "radius": 0.02}
    v, uv, f = synth._wire_parts(_prim("cube", wireframe=wf))
    assert len(f) == 12 * 2 * 6  # 12 edges, 6-sided open tubes
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    edges = [(a, b) for a in corners for b in corners if np.isclose(np.abs(a - b).sum(), 1.0) and
             tuple(a) < tuple(b)]
    assert len(edges) == 12

    def dist(p, a, b):
        t = np.clip((p - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
        return np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1)

    matched = set()
    for tube in v.reshape(12, 14, 3):  # 2 rings of 7 points (6 sides, closed) per tube
        hits = [k for k, (a, b) in enumerate(edges) if np.allclose(dist(tube, a, b), 0.02, atol=1e-9)]
        assert len(hits) == 1  # every point of the tube at the radius from exactly one cube edge
        matched.add(hits[0])
    assert matched == set(range(12))


def test_boolean_difference_carves_a_cube_corner():
    cutter = _prim("sphere", scale=[0.6, 0.6, 0.6], translation=[0.5, 0.5, 0.5])
    cutter["texture"] = {"kind": "stripes", "angle": 0.3, "period": 0.2, "duty": 0.5,
                         "colours": [[255, 0, 0], [0, 0, 255]]}
    obj = synth.build_object(_recipe([_prim("cube")], {"cutter": cutter}))
    assert not synth.check_object(obj)
    c = obj.vertices[obj.faces].mean(axis=1)
    d = np.linalg.norm(c - 0.5, axis=1)  # the cube still spans [-0.5, 0.5]^3: no rescale
    assert d.min() >= 0.3 - 0.01  # nothing left inside the carved ball (walls sag < 1 %)
    walls = (np.abs(d - 0.3) < 0.01) & (np.abs(c).max(axis=1) < 0.5 - 1e-9)
    assert walls.sum() > 20  # the cavity has walls inside the cube
    n = np.cross(*(obj.vertices[obj.faces[walls]][:, k] - obj.vertices[obj.faces[walls]][:, 0]
                   for k in (1, 2)))
    assert ((n * (0.5 - c[walls])).sum(axis=1) > 0).mean() > 0.95  # walls face into the cavity


def test_invalid_objects_are_rejected():
    obj = synth.build_object(_recipe([_prim("cube", scale=[1.0, 1.0, 1e-4])]))
    assert any("degenerate" in p for p in synth.check_object(obj))
    flat = _prim("cube")
    flat["texture"] = {"kind": "checkers", "cells": 2, "colours": [[9, 9, 9], [9, 9, 9]]}
    assert any("texture" in p for p in synth.check_object(synth.build_object(_recipe([flat]))))


# ----------------------------------------------------------------------------- meta.json
def test_meta_recipe_round_trip(batch, tmp_path):
    for i in (2, 5):
        folder = batch / synth.object_name(0, i)
        meta = json.loads((folder / "meta.json").read_text())
        assert synth.meta_is_valid(folder, 0, i) == meta
        rebuilt = synth.build_object(synth.recipe_of(meta))
        assert synth.encode_files(rebuilt) == {k: (folder / k).read_bytes()
                                               for k in ("model.obj", "model.mtl", "texture.png")}
        synth.write_object(tmp_path, rebuilt)
        assert _files(tmp_path / meta["name"]) == _files(folder)
    # a changed file invalidates the meta
    shutil.copytree(folder, tmp_path / "changed")
    with open(tmp_path / "changed" / "model.mtl", "a") as fh:
        fh.write("# edited\n")
    assert synth.meta_is_valid(tmp_path / "changed") is None


# ----------------------------------------------------------------------------- pipeline
def test_pipeline_resume_local(tmp_path):
    out = tmp_path / "synth"
    cfg = pipe.SynthRunConfig(count=5, seed=3, out=out, local=True, progress=False)
    res = pipe.run_synth(cfg)
    assert res.counts == {"done": 5, "failed": 0, "skipped": 0}
    before = {n: _files(p) for n, p in synth.list_synth(out)}
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(x)["geometry_key"] for x in lines)

    res = pipe.run_synth(cfg)  # nothing to do
    assert res.counts == {"done": 0, "failed": 0, "skipped": 5}
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5

    shutil.rmtree(out / "s3_000001")  # deleted -> regenerated
    with open(out / "s3_000004" / "model.obj", "a") as fh:  # changed -> regenerated
        fh.write("v 9 9 9\n")
    res = pipe.run_synth(cfg)
    assert res.counts == {"done": 2, "failed": 0, "skipped": 3}
    assert {n: _files(p) for n, p in synth.list_synth(out)} == before  # byte-identical again

    (out / "manifest.jsonl").unlink()  # killed before the manifest lines: recognised by meta.json
    res = pipe.run_synth(cfg)
    assert res.counts == {"done": 0, "failed": 0, "skipped": 5}


def test_pipeline_refuses_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert cli_main(["synth", "--count", "1", "--out", str(tmp_path / "x"), "--local", "--quiet"]) == 2
    assert cli_main(["synth", "--count", "0", "--out", str(tmp_path / "y"), "--local"]) == 2


def test_cli_and_dataset_kind(tmp_path, capsys):
    out = tmp_path / "set"
    assert cli_main(["synth", "--count", "3", "--seed", "2", "--out", str(out), "--local", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "3 generated" in text and str(out) in text and "--dataset synth" in text
    assert datasets.detect_dataset(out) == "synth"
    assert datasets.detect_dataset(out / "s2_000000") == "synth"
    refs = datasets.list_objects("synth", out)
    assert [r.name for r in refs] == ["s2_000000", "s2_000001", "s2_000002"]
    asset = refs[0].load()
    assert asset.source == "synth/scans" and not asset.warnings
    assert isinstance(asset.mesh.visual, trimesh.visual.TextureVisuals)
    np.testing.assert_allclose(asset.to_normalized, np.eye(4), atol=1e-5)  # already normalised


@pytest.mark.slow
def test_pipeline_on_ray(tmp_path):
    cfg = pipe.SynthRunConfig(count=4, seed=5, out=tmp_path / "r", batch=2, num_cpus=1, progress=False)
    res = pipe.run_synth(cfg)
    assert res.counts["done"] == 4 and res.counts["failed"] == 0
    local = tmp_path / "l"
    pipe.run_synth(pipe.SynthRunConfig(count=4, seed=5, out=local, local=True, progress=False))
    assert {n: _files(p) for n, p in synth.list_synth(tmp_path / "r")} == \
        {n: _files(p) for n, p in synth.list_synth(local)}


def _renderer_available() -> bool:
    try:
        from geolrm_bench import rendering

        rendering.render_views(trimesh.creation.box(extents=(1, 1, 1)), resolution=8, views=[0])
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _renderer_available(), reason="offscreen renderer unavailable")
def test_one_object_renders(batch):
    from geolrm_bench import rendering

    ref = datasets.list_objects("synth", batch)[0]
    layers = rendering.render_views(ref.load().mesh, resolution=48, views=[0])
    rgba = layers["rgba"][0]
    on = rgba[..., 3] > 0
    assert 0.02 < on.mean() < 0.98
    assert rgba[on][:, :3].astype(float).std(axis=0).max() > 5  # textured, not one flat colour
    assert (layers["depth"][0][on] > 0).all()


# ----------------------------------------------------------------------------- disjointness
@pytest.mark.skipif(not SAMPLE_INDEX.is_file(), reason="data/sample absent (run `make data-sample`)")
def test_training_objects_disjoint_from_sample_set(batch):
    index = json.loads(SAMPLE_INDEX.read_text())
    held_out = {o["geometry_key"] for o in index["objects"]}
    assert len(held_out) == len(index["objects"])
    # the hash recognises a held-out object read from its own file (a leak would be caught)
    obj = next(o for o in index["objects"] if o["kind"] != "meshes")
    mesh = datasets._visual_obj(SAMPLE_INDEX.parent / obj["path"])
    assert pipe.object_geometry_key(mesh) == obj["geometry_key"]
    keys = {pipe.object_geometry_key(p / "model.obj") for _, p in synth.list_synth(batch)}
    assert len(keys) == 48
    assert not keys & held_out
    ycb = REPO / "data" / "ycb" / "index.json"  # real scans usable for training (geometry only)
    if ycb.is_file():
        assert not {o["geometry_key"] for o in json.loads(ycb.read_text())["objects"]} & held_out
    synth_root = REPO / "data" / "synth"  # the generated training set, when present
    if (synth_root / "manifest.jsonl").is_file():
        recs = pipe.read_manifest(synth_root / "manifest.jsonl").values()
        assert not {r["geometry_key"] for r in recs if r.get("status") == "done"} & held_out
