"""Dataset readers on small fixtures with known coordinates (built here, in tmp_path).

The expected normalised coordinates are re-derived in the tests from the fixtures'
corner coordinates (units, axis swap, bbox centre, longest side) in float64, not taken
from the code under test.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from geolrm_bench import datasets as ds
from geolrm_bench.errors import BenchError

RED = (200, 30, 20)


# ----------------------------------------------------------------------------- fixtures
def box_corners(lo, hi) -> np.ndarray:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


# 12 triangles of a box whose corners are ordered as in box_corners (index = 4x + 2y + z)
BOX_FACES = np.array([
    [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
])


def obj_text(corners: np.ndarray, mtllib: str | None = "model.mtl", header: str = "") -> str:
    lines = [header] if header else []
    if mtllib:
        lines += [f"mtllib {mtllib}", "usemtl material_0"]
    lines += [f"v {float(x)!r} {float(y)!r} {float(z)!r}" for x, y, z in corners]
    lines += [f"vt {u} {v}" for u, v in ((0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9))]
    for a, b, c in BOX_FACES:
        lines.append(f"f {a + 1}/1 {b + 1}/2 {c + 1}/3")
    return "\n".join(lines) + "\n"


def png_bytes(color=RED, size=4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


MTL = "newmtl material_0\nKd 1.0 1.0 1.0\nmap_Kd texture.png\n"
GSO_LO, GSO_HI = (0.10, -0.20, 0.00), (0.30, 0.20, 0.05)  # metres, resting on z = 0


def gso_files(with_texture: bool = True) -> dict[str, bytes]:
    files = {
        "meshes/model.obj": obj_text(box_corners(GSO_LO, GSO_HI)).encode(),
        "meshes/model.mtl": MTL.encode(),
        "model.sdf": b"<sdf/>",
    }
    if with_texture:
        files["materials/textures/texture.png"] = png_bytes()
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLRM_BENCH_CACHE", str(tmp_path / "cache"))


def expected_normalised(points_m: np.ndarray, lo_m, hi_m) -> np.ndarray:
    """float64 re-derivation: centre of the metric bbox to 0, longest side to 1."""
    lo_m, hi_m = np.asarray(lo_m, float), np.asarray(hi_m, float)
    return (points_m - (lo_m + hi_m) / 2) / (hi_m - lo_m).max()


def assert_same_point_set(a: np.ndarray, b: np.ndarray, atol=1e-9):
    """Every point of b has a match in a and vice versa (vertex order may change on load)."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    assert d.min(axis=0).max() < atol and d.min(axis=1).max() < atol


def check_normalised(asset: ds.ObjectAsset):
    v = asset.mesh.vertices
    assert np.abs(v).max() <= 0.5
    ext = v.max(0) - v.min(0)
    assert abs(ext.max() - 1.0) < 1e-12
    np.testing.assert_allclose((v.max(0) + v.min(0)) / 2, 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- GSO
def check_gso_asset(asset: ds.ObjectAsset):
    check_normalised(asset)
    corners = box_corners(GSO_LO, GSO_HI)
    exp = expected_normalised(corners, GSO_LO, GSO_HI)
    assert_same_point_set(asset.mesh.vertices, exp)
    # to_normalized maps the file's coordinates, and to_gt_frame inverts it
    np.testing.assert_allclose(asset.to_normalized_frame(corners), exp, atol=1e-12)
    assert_same_point_set(asset.to_gt_frame(asset.mesh.vertices), corners)
    np.testing.assert_allclose(asset.to_gt_frame(exp), corners, atol=1e-12)
    assert_same_point_set(asset.gt_mesh().vertices, corners)
    assert asset.unit_m == 1.0
    # the texture in materials/textures/ was found although the MTL sits in meshes/
    assert isinstance(asset.mesh.visual, trimesh.visual.TextureVisuals)
    img = asset.mesh.visual.material.image
    assert img is not None and img.size == (4, 4)
    assert img.convert("RGB").getpixel((1, 1)) == RED
    assert asset.mesh.visual.uv.shape == (len(asset.mesh.vertices), 2)
    assert asset.warnings == []


def test_gso_folder(tmp_path):
    root = tmp_path / "gso"
    write_tree(root / "Toy_Box", gso_files())
    assert ds.detect_dataset(root) == "gso"
    refs = ds.list_objects("gso", root)
    assert [r.name for r in refs] == ["Toy_Box"]
    asset = pickle.loads(pickle.dumps(refs[0])).load()  # refs travel to Ray workers
    assert asset.name == "Toy_Box" and asset.source == "gso"
    check_gso_asset(asset)


def test_gso_zip(tmp_path):
    root = tmp_path / "gso"
    write_zip(root / "Zipped_Box.zip", gso_files())
    write_tree(root / "Folder_Box", gso_files())
    assert ds.detect_dataset(root) == "gso"
    refs = ds.list_objects("gso", root)
    assert [r.name for r in refs] == ["Folder_Box", "Zipped_Box"]
    asset = refs[1].load()
    check_gso_asset(asset)
    assert asset.path == root / "Zipped_Box.zip"
    # extracted once into the cache, reused on the next load
    cached = list((tmp_path / "cache" / "zips").iterdir())
    assert len(cached) == 1
    check_gso_asset(refs[1].load())
    assert list((tmp_path / "cache" / "zips").iterdir()) == cached


@pytest.mark.parametrize("bad", ["../evil.txt", "meshes/../../evil.txt", "/etc/evil.txt"])
def test_gso_zip_escaping_entry(tmp_path, bad):
    files = gso_files()
    files[bad] = b"x"
    z = write_zip(tmp_path / "gso" / "Bad_Box.zip", files)
    with pytest.raises(BenchError) as e:
        ds.list_objects("gso", tmp_path / "gso")[0].load()
    msg = str(e.value)
    assert "\n" not in msg and str(z) in msg and bad in msg
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "gso" / "evil.txt").exists()


def test_missing_texture_is_a_warning(tmp_path):
    root = write_tree(tmp_path / "gso" / "Bare_Box", gso_files(with_texture=False))
    with pytest.warns(UserWarning, match="texture.png"):
        asset = ds.list_objects("gso", root.parent)[0].load()
    assert len(asset.warnings) == 1 and "texture.png" in asset.warnings[0] and "Bare_Box" in asset.warnings[0]
    assert isinstance(asset.mesh.visual, trimesh.visual.ColorVisuals)
    colors = asset.mesh.visual.face_colors
    assert (colors[:, :3] == 128).all() and len(colors) == len(asset.mesh.faces)
    check_normalised(asset)


# ----------------------------------------------------------------------------- HOPE / scans / Omni
def test_hope_centimetres(tmp_path):
    lo_cm, hi_cm = (-5.0, -2.5, -1.0), (5.0, 2.5, 1.5)
    corners_cm = box_corners(lo_cm, hi_cm)
    header = "# This file uses centimeters as units for non-parametric coordinates."
    write_tree(tmp_path / "hope" / "Butter", {
        "butter.obj": obj_text(corners_cm, "butter.mtl", header).encode(),
        "butter_col.obj": obj_text(box_corners((0, 0, 0), (1, 1, 1)), None).encode(),  # collision hull
        "butter.mtl": MTL.replace("texture.png", "texture_map.png").encode(),
        "texture_map.png": png_bytes(),
    })
    assert ds.detect_dataset(tmp_path / "hope") == "hope"
    (ref,) = ds.list_objects("hope", tmp_path / "hope")
    asset = ref.load()
    check_normalised(asset)
    assert asset.unit_m == 0.01
    corners_m = corners_cm * 0.01
    # HOPE files are Y-up: Z-up metres by hand, (x, y, z) -> (x, -z, y) / 100
    zup = np.stack([corners_m[:, 0], -corners_m[:, 2], corners_m[:, 1]], axis=1)
    exp = expected_normalised(zup, zup.min(0), zup.max(0))
    assert_same_point_set(asset.mesh.vertices, exp)
    rot = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    np.testing.assert_allclose(asset.to_normalized[:3, :3], rot * 0.01 / 0.10, atol=1e-15)
    # file Y (5 cm) is now the height, file X (10 cm) the longest side
    ext = asset.mesh.vertices.max(0) - asset.mesh.vertices.min(0)
    np.testing.assert_allclose(ext, [1.0, 2.5 / 10, 5.0 / 10], atol=1e-12)
    # the GT frame is the file's (centimetres, Y-up); times unit_m gives metres
    np.testing.assert_allclose(asset.to_gt_frame(exp), corners_cm, atol=1e-10)
    np.testing.assert_allclose(asset.to_gt_frame(exp) * asset.unit_m, corners_m, atol=1e-12)
    assert asset.mesh.visual.material.image is not None and asset.warnings == []


def test_scans_folder(tmp_path):
    write_tree(tmp_path / "scans" / "b_scan", {
        "scan.obj": obj_text(box_corners((0, 0, 0), (2, 1, 1)), "scan.mtl").encode(),
        "scan.mtl": MTL.encode(), "texture.png": png_bytes(),
    })
    write_tree(tmp_path / "scans" / "a_scan", {
        "a.obj": obj_text(box_corners((0, 0, 0), (1, 1, 3)), "a.mtl").encode(),
        "a.mtl": MTL.encode(), "texture.png": png_bytes((0, 255, 0)),
    })
    assert ds.detect_dataset(tmp_path / "scans") == "scans"
    refs = ds.list_objects("scans", tmp_path / "scans")
    assert [r.name for r in refs] == ["a_scan", "b_scan"]
    for r in refs:
        a = r.load()
        check_normalised(a)
        assert a.mesh.visual.material.image is not None
    a = refs[0].load()
    assert_same_point_set(a.mesh.vertices, expected_normalised(box_corners((0, 0, 0), (1, 1, 3)),
                                                                (0, 0, 0), (1, 1, 3)))


def test_stale_mtllib_name_falls_back_to_the_folder_mtl(tmp_path):
    write_tree(tmp_path / "hope" / "Popcorn", {
        "popcorn.obj": obj_text(box_corners((0, 0, 0), (1, 2, 3)), "textured.mtl").encode(),
        "popcorn.mtl": MTL.encode(), "texture.png": png_bytes(),
    })
    with pytest.warns(UserWarning, match="stale"):
        asset = ds.list_objects("hope", tmp_path / "hope")[0].load()
    assert asset.mesh.visual.material.image is not None


def test_omni_millimetres_y_up(tmp_path):
    lo_mm, hi_mm = (0.0, 0.0, 0.0), (100.0, 300.0, 50.0)  # Y-up: 30 cm tall
    corners_mm = box_corners(lo_mm, hi_mm)
    scan = tmp_path / "omni" / "raw_scans" / "toy_train" / "toy_train_001" / "Scan"
    write_tree(scan, {
        "Scan.obj": obj_text(corners_mm, "Scan.mtl").encode(),
        "Scan.mtl": MTL.replace("texture.png", "Scan.jpg").encode(),
    })
    Image.new("RGB", (4, 4), RED).save(scan / "Scan.jpg")
    for root in (tmp_path / "omni", tmp_path / "omni" / "raw_scans"):
        assert ds.detect_dataset(root) == "omni"
        (ref,) = ds.list_objects("omni", root)
        assert ref.name == "toy_train_001"
    asset = ref.load()
    check_normalised(asset)
    assert asset.unit_m == 0.001
    # Z-up metres by hand: (x, y, z) -> (x, -z, y) / 1000
    zup = np.stack([corners_mm[:, 0], -corners_mm[:, 2], corners_mm[:, 1]], axis=1) / 1000.0
    exp = expected_normalised(zup, zup.min(0), zup.max(0))
    assert_same_point_set(asset.mesh.vertices, exp)
    # the tallest side (file Y) is now Z, of length 1
    ext = asset.mesh.vertices.max(0) - asset.mesh.vertices.min(0)
    np.testing.assert_allclose(ext, [100 / 300, 50 / 300, 1.0], atol=1e-12)
    # the top corner (100, 300, 50) mm lands at (1/6, -1/12, 1/2)
    top = asset.to_normalized_frame([100.0, 300.0, 50.0])
    np.testing.assert_allclose(top, [1 / 6, -1 / 12, 0.5], atol=1e-12)
    np.testing.assert_allclose(asset.to_gt_frame([1 / 6, -1 / 12, 0.5]), [100.0, 300.0, 50.0], atol=1e-9)
    assert asset.mesh.visual.material.image is not None and asset.warnings == []


# ----------------------------------------------------------------------------- generic meshes
@pytest.mark.parametrize("ext", [".ply", ".stl", ".glb", ".off", ".obj"])
def test_mesh_files(tmp_path, ext):
    lo, hi = np.array([1.0, 2.0, 3.0]), np.array([1.5, 4.0, 3.25])
    corners = box_corners(lo, hi)
    mesh = trimesh.Trimesh(corners, BOX_FACES, process=False)
    path = tmp_path / "meshes" / f"thing{ext}"
    path.parent.mkdir()
    mesh.export(path)
    assert ds.detect_dataset(path) == "meshes"
    asset = ds.load_mesh_file(path)
    assert asset.name == "thing"
    check_normalised(asset)
    assert_same_point_set(asset.mesh.vertices, expected_normalised(corners, lo, hi))
    assert_same_point_set(asset.gt_mesh().vertices, corners)
    assert len(asset.mesh.faces) == 12
    (ref,) = ds.list_objects("meshes", tmp_path / "meshes")
    assert ref.name == "thing"


def test_vertex_colours_kept(tmp_path):
    mesh = trimesh.Trimesh(box_corners((0, 0, 0), (1, 1, 1)), BOX_FACES, process=False,
                           vertex_colors=np.tile([10, 200, 30, 255], (8, 1)))
    mesh.export(tmp_path / "c.ply")
    asset = ds.load_mesh_file(tmp_path / "c.ply")
    assert (asset.mesh.visual.vertex_colors[:, :3] == [10, 200, 30]).all()


def test_meshes_folder_and_names(tmp_path):
    root = tmp_path / "m"
    for rel in ("b.stl", "a.ply", "sub/c.off", ".hidden/d.stl"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        trimesh.Trimesh(box_corners((0, 0, 0), (1, 1, 1)), BOX_FACES).export(root / rel)
    assert ds.detect_dataset(root) == "meshes"
    assert [r.name for r in ds.list_objects("meshes", root)] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- bad input
def test_empty_mesh(tmp_path):
    p = tmp_path / "empty.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(BenchError, match="no faces") as e:
        ds.load_mesh_file(p)
    assert "'empty'" in str(e.value) and str(p) in str(e.value)


def test_nan_vertices(tmp_path):
    corners = box_corners((0, 0, 0), (1, 1, 1))
    text = obj_text(corners, None).replace("v 1.0 1.0 1.0", "v nan 1.0 1.0")
    assert "nan" in text
    p = tmp_path / "nanny.obj"
    p.write_text(text)
    with pytest.raises(BenchError, match="NaN or infinite") as e:
        ds.load_mesh_file(p)
    assert "'nanny'" in str(e.value)


@pytest.mark.parametrize("ext", [".glb", ".ply", ".stl"])
def test_corrupt_file(tmp_path, ext):
    p = tmp_path / f"junk{ext}"
    p.write_bytes(b"\x00\x01garbage" * 3)
    with pytest.raises(BenchError) as e:
        ds.load_mesh_file(p)
    msg = str(e.value)
    assert "\n" not in msg and "'junk'" in msg and str(p) in msg


def test_unreadable_and_missing(tmp_path):
    with pytest.raises(BenchError, match="not found"):
        ds.load_mesh_file(tmp_path / "nope.obj")
    (tmp_path / "dir.obj").mkdir()
    with pytest.raises(BenchError):
        ds.load_mesh_file(tmp_path / "dir.obj")
    z = tmp_path / "g" / "Broken.zip"
    z.parent.mkdir()
    z.write_bytes(b"PK not really a zip")
    with pytest.raises(BenchError, match="unreadable zip"):
        ds.list_objects("gso", z.parent)[0].load()
    with pytest.raises(BenchError, match="not found"):
        ds.list_objects("scans", tmp_path / "missing_root")
    with pytest.raises(BenchError, match="unknown dataset kind"):
        ds.list_objects("shapenet", tmp_path)


# ----------------------------------------------------------------------------- roots, sample index
def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOLRM_BENCH_DATA", str(tmp_path))
    assert ds.default_root("gso") == tmp_path / "gso"
    monkeypatch.delenv("GEOLRM_BENCH_DATA")
    repo = Path(ds.__file__).resolve().parents[1]
    assert ds.default_root("sample") == repo / "data" / "sample"


def test_sample_index(tmp_path):
    root = tmp_path / "sample"
    write_tree(root / "Toy_Box", gso_files())
    (root / "cube.stl").parent.mkdir(exist_ok=True)
    trimesh.Trimesh(box_corners((0, 0, 0), (1, 2, 4)), BOX_FACES).export(root / "cube.stl")
    index = {"dataset": "sample", "objects": [
        {"name": "Toy_Box", "kind": "gso", "path": "Toy_Box"},
        {"name": "cube", "kind": "meshes", "path": "cube.stl"},
    ]}
    (root / "index.json").write_text(json.dumps(index))
    assert ds.detect_dataset(root) == "sample"
    refs = ds.list_objects("sample", root)
    assert [(r.name, r.kind, r.dataset) for r in refs] == [("Toy_Box", "gso", "sample"),
                                                           ("cube", "meshes", "sample")]
    a = refs[0].load()
    assert a.source == "sample/gso"
    check_gso_asset(a)
    check_normalised(refs[1].load())
    (root / "index.json").write_text("{not json")
    with pytest.raises(BenchError, match="index.json"):
        ds.list_objects("sample", root)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sample", "ycb"])
def test_installed_sample_data_loads(kind):
    root = ds.default_root(kind)
    if not (root / "index.json").is_file():
        pytest.skip(f"{root} not installed (make data-sample)")
    refs = ds.list_objects(kind, root)
    assert len(refs) >= (15 if kind == "sample" else 70)
    for r in refs:
        a = r.load()
        check_normalised(a)
        assert len(a.mesh.faces) > 0


def test_corrupt_texture_is_a_warning(tmp_path):
    files = gso_files()
    files["materials/textures/texture.png"] = b"not a png"
    write_tree(tmp_path / "gso" / "Bad_Texture", files)
    with pytest.warns(UserWarning, match="unreadable"):
        asset = ds.list_objects("gso", tmp_path / "gso")[0].load()
    assert len(asset.warnings) == 1 and "texture.png" in asset.warnings[0]
    assert (asset.mesh.visual.face_colors[:, :3] == 128).all()


def test_loose_obj_does_not_borrow_another_objects_texture(tmp_path):
    root = tmp_path / "scans"
    write_tree(root / "other", {"o.obj": obj_text(box_corners((0, 0, 0), (1, 1, 1)), "o.mtl").encode(),
                                "o.mtl": MTL.encode(), "texture.png": png_bytes()})
    write_tree(root, {"loose.obj": obj_text(box_corners((0, 0, 0), (1, 1, 2)), "loose.mtl").encode(),
                      "loose.mtl": MTL.encode()})
    refs = {r.name: r for r in ds.list_objects("scans", root)}
    assert sorted(refs) == ["loose", "other"]
    with pytest.warns(UserWarning, match="texture.png"):
        asset = refs["loose"].load()
    assert isinstance(asset.mesh.visual, trimesh.visual.ColorVisuals)


def test_a_new_kind_is_one_registered_class(tmp_path, monkeypatch):
    """The registry: one DatasetReader subclass gives listing, loading, detection and units."""
    monkeypatch.setattr(ds, "_READERS", dict(ds._READERS))  # registration undone after

    @ds.register_dataset("plyfolder")
    class PlyFolder(ds.DatasetReader):
        unit_m = 0.001  # millimetres, Z-up
        detect_order = 5

        def list_objects(self, root):
            return [ds.ObjectRef(p.stem, p, self.name) for p in sorted(root.glob("*.ply"))]

        def detect(self, root):
            return (root / "PLYFOLDER").is_file()

    (tmp_path / "PLYFOLDER").write_text("")
    trimesh.creation.box(extents=(100.0, 50.0, 20.0)).export(tmp_path / "brick.ply")
    assert "plyfolder" in ds.kinds() and ds.detect_dataset(tmp_path) == "plyfolder"
    (ref,) = ds.list_objects("plyfolder", tmp_path)
    asset = ref.load()
    assert asset.source == "plyfolder" and asset.unit_m == 0.001
    np.testing.assert_allclose(asset.mesh.bounds, [[-0.5, -0.25, -0.1], [0.5, 0.25, 0.1]], atol=1e-9)
    np.testing.assert_allclose(asset.to_normalized[:3, :3], np.eye(3) / 100.0, atol=1e-12)  # 100 mm -> 1
    with pytest.raises(ValueError, match="twice"):
        ds.register_dataset("plyfolder")(PlyFolder)
    with pytest.raises(BenchError, match="unknown dataset kind 'nope'"):
        ds.list_objects("nope", tmp_path)
