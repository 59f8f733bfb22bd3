"""3DGS .ply export/import: hand-set values, a hand-written file with its own header, malformed files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geolrm_bench.errors import BenchError
from geolrm_bench.model.gaussians import Gaussians
from geolrm_bench.model.ply import load_ply, save_ply

C0 = 1.0 / (2.0 * math.sqrt(math.pi))  # degree-0 spherical harmonic, from its definition


def _hand_set() -> Gaussians:
    return Gaussians(
        means=torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.0, 0.25], [0.0, 0.45, -0.5]]),
        opacities=torch.tensor([0.5, 0.9, 0.002]),
        scales=torch.tensor([[0.01, 0.02, 0.005], [0.001, 0.001, 0.001], [0.03, 0.01, 0.02]]),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.6, 0.8]]),
        colors=torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.25], [0.1, 0.9, 0.7]]),
    )


def _read_body(path):
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode().splitlines()
    names = [line.split()[-1] for line in header if line.startswith("property")]
    assert all(line.split()[1] == "float" for line in header if line.startswith("property"))
    body = np.frombuffer(raw[end:], dtype="<f4").reshape(-1, len(names))
    return header, names, body


def test_written_file_has_standard_layout_and_inverse_activations(tmp_path):
    p = save_ply(tmp_path / "g.ply", _hand_set())
    header, names, body = _read_body(p)
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 3"]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    col = {n: body[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(col["opacity"], [0.0, math.log(9.0), math.log(0.002 / 0.998)], rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(col["scale_0"], np.log([0.01, 0.001, 0.03]), rtol=1e-6)
    np.testing.assert_allclose(col["f_dc_0"], [0.0, 0.5 / C0, -0.4 / C0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(col["f_dc_2"], [0.0, -0.25 / C0, 0.2 / C0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(body[:, names.index("rot_0"):], [[1, 0, 0, 0], [0.5] * 4, [0, 0, 0.6, 0.8]],
                               atol=1e-7)
    assert np.all(body[:, 3:6] == 0)


def test_round_trip_and_opacity_pruning(tmp_path):
    g = _hand_set()
    back = load_ply(save_ply(tmp_path / "a.ply", g))
    for k, v in g.as_dict().items():
        torch.testing.assert_close(back.as_dict()[k], v, rtol=1e-5, atol=1e-6)
    pruned = load_ply(save_ply(tmp_path / "b.ply", g, min_opacity=0.005))
    assert len(pruned) == 2
    torch.testing.assert_close(pruned.means, g.means[:2])
    # non-unit quaternions are normalised on write; f_rest padding is ignored on read
    g2 = Gaussians(**{**g.as_dict(), "quats": g.quats * 3.0})
    back2 = load_ply(save_ply(tmp_path / "c.ply", g2, sh_rest=45), dtype=torch.float64)
    assert back2.means.dtype == torch.float64
    torch.testing.assert_close(back2.quats.float(), g.quats, rtol=1e-6, atol=1e-7)
    assert "property float f_rest_44" in (tmp_path / "c.ply").read_bytes()[:2000].decode(errors="ignore")


def test_hand_written_file_with_doubles_and_extra_properties_loads(tmp_path):
    # header written here independently: doubles, extra fields in a different order, a comment
    rows = [  # x y z, opacity logit, log scales, rot w x y z, f_dc, extra
        dict(x=0.1, y=0.2, z=-0.3, opacity=2.0, s=(-4.0, -5.0, -3.0), rot=(0.0, 2.0, 0.0, 0.0),
             dc=(1.0, -1.0, 0.0), extra=7.0),
        dict(x=-0.1, y=0.0, z=0.4, opacity=-1.0, s=(-6.0, -6.0, -6.0), rot=(1.0, 1.0, 1.0, 1.0),
             dc=(3.0, -3.0, 0.5), extra=1.0),
    ]
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0", "opacity", "rot_0", "rot_1", "rot_2",
             "rot_3", "scale_0", "scale_1", "scale_2", "red"]
    dt = np.dtype([(n, "<f8") for n in names])
    arr = np.zeros(2, dtype=dt)
    for i, r in enumerate(rows):
        arr[i] = (r["x"], r["y"], r["z"], *r["dc"], r["extra"], r["opacity"], *r["rot"], *r["s"], r["extra"])
    header = "ply\nformat binary_little_endian 1.0\ncomment made by hand\nelement vertex 2\n"
    header += "".join(f"property double {n}\n" for n in names) + "end_header\n"
    path = tmp_path / "hand.ply"
    path.write_bytes(header.encode() + arr.tobytes())
    g = load_ply(path, dtype=torch.float64)
    expect_o = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))]
    torch.testing.assert_close(g.opacities, torch.tensor(expect_o, dtype=torch.float64))
    torch.testing.assert_close(g.scales[0], torch.tensor([math.exp(-4), math.exp(-5), math.exp(-3)],
                                                         dtype=torch.float64))
    expect_q = torch.tensor([[0, 1.0, 0, 0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(g.quats, expect_q)
    expect_c = [[0.5 + C0, 0.5 - C0, 0.5], [1.0, 0.0, 0.5 + 0.5 * C0]]  # 0.5 + 3 C0 > 1 -> clipped
    torch.testing.assert_close(g.colors, torch.tensor(expect_c, dtype=torch.float64))
    torch.testing.assert_close(g.means[1], torch.tensor([-0.1, 0.0, 0.4], dtype=torch.float64))


def test_ascii_and_big_endian_files_load(tmp_path):
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    values = [0.25, -0.5, 0.125, 0.0, 0.0, 0.0, 0.0, -2.0, -2.0, -2.0, 1.0, 0.0, 0.0, 0.0]
    head = lambda fmt: (f"ply\nformat {fmt} 1.0\nelement vertex 1\n"  # noqa: E731
                        + "".join(f"property float {n}\n" for n in names) + "end_header\n")
    (tmp_path / "a.ply").write_text(head("ascii") + " ".join(map(str, values)) + "\n")
    (tmp_path / "b.ply").write_bytes(head("binary_big_endian").encode() + np.asarray(values, ">f4").tobytes())
    for name in ("a.ply", "b.ply"):
        g = load_ply(tmp_path / name)
        assert g.means.tolist() == [[0.25, -0.5, 0.125]]
        assert g.opacities.item() == pytest.approx(0.5)
        assert g.scales[0, 0].item() == pytest.approx(math.exp(-2.0), rel=1e-6)


@pytest.mark.parametrize("content,match", [
    (b"", "not a PLY"),
    (b"hello world\n", "not a PLY"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n\0\0\0\0",
     "missing properties"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 5\n"
     + b"".join(f"property float {n}\n".encode() for n in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2",
                                                           "opacity", "scale_0", "scale_1", "scale_2",
                                                           "rot_0", "rot_1", "rot_2", "rot_3"])
     + b"end_header\n" + b"\0" * 20, "truncated"),
])
def test_malformed_files_raise_bench_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(BenchError, match=match) as e:
        load_ply(path)
    assert "bad.ply" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BenchError, match="not found"):
        load_ply(tmp_path / "missing.ply")


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    save_ply(tmp_path / "g.ply", _hand_set())
    save_ply(tmp_path / "g.ply", _hand_set(), min_opacity=0.5)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ply"]
    assert len(load_ply(tmp_path / "g.ply")) == 2
