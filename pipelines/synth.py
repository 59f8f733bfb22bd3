"""Procedural training objects (:mod:`geolrm_bench.synth`) generated on Ray, resumable.

Composition only: :func:`geolrm_bench.synth.generate_object` draws, builds, checks and writes
one object; this module plans the indices, runs them as Ray tasks (a few objects per task;
object work is ~0.05 s, so one task per object would be mostly scheduling), keeps the
manifest and prints the tally. Same rules as :mod:`geolrm_bench.pipelines.occupancy_gt`,
whose manifest and Ray helpers it reuses:

Layout under ``out``::

    <name>/model.obj, model.mtl, texture.png   one object (name = s<seed>_<index:06d>)
    <name>/meta.json                           recipe + sha256 of the files, written last
    synth.json                                 marks the folder as a ``synth`` dataset root
    manifest.jsonl                             one record per finished or failed object (append-only)

An object is *done* when its record (or, after a kill between the folder's atomic rename and
the manifest line, its ``meta.json``) is of the current generator version, seed, index and
generator config, and every file still has the recorded sha256; a rerun skips it and
regenerates the rest (deleted, changed or stale objects). Generation is deterministic, so
a regenerated object is byte-identical to the lost one. Each record also carries the
object's :func:`geometry_key` (the hash ``make data-sample`` de-duplicates with), to check
that training objects never coincide with the held-out evaluation set.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trimesh

from geolrm_bench import synth
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import read_json, remove_stale_temporaries, sha256_file, write_json_atomic
from geolrm_bench.pipelines.cluster import init_ray, sigterm_as_interrupt, thread_env
from geolrm_bench.pipelines.occupancy_gt import (
    MANIFEST_NAME,
    append_manifest,
    collect_records,
    read_manifest,
)
from geolrm_bench.sample_data import geometry_key


@dataclass
class SynthRunConfig:
    """Options of ``geolrm-bench synth`` (see the CLI help for each)."""

    count: int = 1000  # objects with indices start .. start + count - 1
    seed: int = 0
    out: Path = Path("data/synth")
    start: int = 0  # first index (extend a set without touching the earlier objects)
    generator: synth.SynthConfig = field(default_factory=synth.SynthConfig)
    batch: int = 8  # objects per Ray task
    address: str | None = None  # existing Ray cluster; None = a local one
    num_cpus: int | None = None  # CPUs of the local Ray (default: all)
    cpus_per_task: float = 1.0
    max_retries: int = 2  # Ray retries of a task whose worker crashed
    local: bool = False  # run in this process without Ray
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.count < 1:
            raise BenchError(f"--count must be >= 1, got {self.count}")
        if self.seed < 0 or self.start < 0:
            raise BenchError(f"--seed and --start must be >= 0, got {self.seed}, {self.start}")
        if self.batch < 1:
            raise BenchError(f"--batch must be >= 1, got {self.batch}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise BenchError(f"--num-cpus must be >= 1, got {self.num_cpus}")


@dataclass
class SynthRunResult:
    records: list[dict]  # one per planned object, in index order
    counts: dict[str, int]  # done / skipped / failed
    out: Path
    manifest: Path
    seconds: float = 0.0


def object_geometry_key(mesh_path: str | Path) -> str:
    """:func:`geolrm_bench.sample_data.geometry_key` of a mesh file, read the way
    ``make data-sample`` reads its candidates (trimesh, no materials, no processing)."""
    mesh_path = Path(mesh_path)
    ext = mesh_path.suffix.lower()[1:]
    kw = {"skip_materials": True} if ext == "obj" else {}
    m = trimesh.load(mesh_path, file_type=ext, force="mesh", process=False, **kw)
    return geometry_key(m.vertices, m.faces)


# ----------------------------------------------------------------------------- records
def _record_from_meta(meta: dict, out: Path, seconds: float | None = None) -> dict:
    name = meta["name"]
    return {
        "object": name, "status": "done", "seed": meta["seed"], "index": meta["index"],
        "version": meta["version"], "config": meta["config"], "attempt": meta["attempt"],
        "files": {k: f"{name}/{k}" for k in meta["sha256"]},
        "sha256": {k: v for k, v in meta["sha256"].items()},
        "primitives": [p["kind"] for p in meta["primitives"]],
        "textures": [p["texture"]["kind"] for p in meta["primitives"]],
        "augmentations": meta["augmentations"],
        "faces": meta["stats"]["faces"], "vertices": meta["stats"]["vertices"],
        "geometry_key": object_geometry_key(out / name / synth.MESH_FILE),
        "seconds": None if seconds is None else round(seconds, 4),
    }


def record_is_valid(rec: dict | None, out: Path, seed: int, index: int, gen: synth.SynthConfig) -> bool:
    """True when ``rec`` is a finished object of this version, seed, index and generator
    config whose files all still match their sha256."""
    if not rec or rec.get("status") != "done" or rec.get("version") != synth.GENERATOR_VERSION:
        return False
    if rec.get("seed") != seed or rec.get("index") != index or rec.get("config") != asdict(gen):
        return False
    files, sums = rec.get("files") or {}, rec.get("sha256") or {}
    if set(files) != {synth.MESH_FILE, synth.MTL_FILE, synth.TEXTURE_FILE}:
        return False
    for key, rel in files.items():
        p = out / rel
        if not p.is_file() or sha256_file(p) != sums.get(key):
            return False
    meta = out / Path(files[synth.MESH_FILE]).parent / synth.META_FILE
    return meta.is_file()


# ----------------------------------------------------------------------------- worker
def generate_batch(indices: list[int], seed: int, out: str | Path, gen: dict) -> list[dict]:
    """Generate objects ``indices`` of ``seed`` into ``out``; one record each (never raises)."""
    out = Path(out)
    cfg = synth.SynthConfig(**gen)
    recs = []
    for i in indices:
        t0 = time.perf_counter()
        try:
            _, meta = synth.generate_object(seed, i, out, cfg)
            rec = _record_from_meta(meta, out, time.perf_counter() - t0)
        except Exception as e:  # one object's failure must not stop the others
            rec = {"object": synth.object_name(seed, i), "status": "failed", "seed": seed, "index": i,
                   "version": synth.GENERATOR_VERSION, "error": one_line(e),
                   "seconds": round(time.perf_counter() - t0, 4)}
        rec["pid"] = os.getpid()
        rec["finished"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        recs.append(rec)
    return recs


def _run_local(batches: list[list[int]], cfg: SynthRunConfig) -> Iterator[dict]:
    gen = asdict(cfg.generator)
    for b in batches:
        yield from generate_batch(b, cfg.seed, cfg.out, gen)


def _run_ray(batches: list[list[int]], cfg: SynthRunConfig) -> Iterator[dict]:
    """Yield records as tasks finish; a bounded window of tasks is in flight (absolute paths:
    a worker's working directory is that of its Ray node, not the driver's)."""
    ray, own = init_ray(cfg.address, cfg.num_cpus, thread_env(cfg.cpus_per_task))
    out = str(cfg.out.absolute())
    gen = asdict(cfg.generator)
    restore = sigterm_as_interrupt()  # after ray.init, which installs its own SIGTERM handler
    try:
        remote = ray.remote(generate_batch).options(num_cpus=cfg.cpus_per_task, max_retries=cfg.max_retries,
                                                    retry_exceptions=False)
        window = max(2, 2 * int(ray.available_resources().get("CPU", 1) / max(cfg.cpus_per_task, 1e-3)))
        pending: dict = {}
        queue = list(batches)
        while queue or pending:
            while queue and len(pending) < window:
                b = queue.pop(0)
                pending[remote.remote(b, cfg.seed, out, gen)] = b
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                b = pending.pop(ref)
                try:
                    yield from ray.get(ref)
                except Exception as e:  # worker crashed past its retries, or task lost
                    for i in b:
                        yield {"object": synth.object_name(cfg.seed, i), "status": "failed", "seed": cfg.seed,
                               "index": i, "version": synth.GENERATOR_VERSION, "error": one_line(e)}
    finally:
        restore()
        if own:
            ray.shutdown()


# ----------------------------------------------------------------------------- driver
def _prepare_root(out: Path) -> None:
    """Create ``out`` (or accept our own earlier output) and write the dataset marker."""
    if out.exists() and not out.is_dir():
        raise BenchError("exists and is a file, not an output folder", out)
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")) and not (
            (out / synth.DATASET_MARKER).is_file() or (out / MANIFEST_NAME).is_file()):
        raise BenchError("exists, is not empty and is not a synth dataset; choose another --out", out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # leftovers of atomic writes of an interrupted run
    marker = {"dataset": "synth", "generator": synth.GENERATOR, "version": synth.GENERATOR_VERSION}
    try:
        same = read_json(out / synth.DATASET_MARKER) == marker
    except BenchError:
        same = False
    if not same:
        write_json_atomic(out / synth.DATASET_MARKER, marker)


def run_synth(cfg: SynthRunConfig) -> SynthRunResult:
    """Generate (or complete) the set; returns records in index order and the counts."""
    t_start = time.perf_counter()
    out = cfg.out
    _prepare_root(out)
    manifest_path = out / MANIFEST_NAME
    manifest = read_manifest(manifest_path)
    gen_dict = asdict(cfg.generator)
    records: dict[str, dict] = {}
    todo: list[int] = []
    indices = list(range(cfg.start, cfg.start + cfg.count))
    for i in indices:
        name = synth.object_name(cfg.seed, i)
        rec = manifest.get(name)
        if record_is_valid(rec, out, cfg.seed, i, cfg.generator):
            records[name] = {**rec, "skipped": True}
            continue
        meta = synth.meta_is_valid(out / name, cfg.seed, i)
        if meta is not None and meta.get("config") == gen_dict:  # finished before a kill, not in the manifest
            rec = _record_from_meta(meta, out)
            append_manifest(manifest_path, rec)
            records[name] = {**rec, "skipped": True}
            continue
        todo.append(i)

    batches = [todo[k:k + cfg.batch] for k in range(0, len(todo), cfg.batch)]
    runner = _run_local if cfg.local else _run_ray
    counts = collect_records(lambda: runner(batches, cfg), len(todo), manifest_path, records, cfg.progress,
                             "synth")
    ordered = [records[n] for n in (synth.object_name(cfg.seed, i) for i in indices) if n in records]
    return SynthRunResult(ordered, counts, out, manifest_path, time.perf_counter() - t_start)


def tally(records: list[dict]) -> dict[str, Counter]:
    """Counts of primitive kinds, texture kinds and augmentations over finished records."""
    done = [r for r in records if r.get("status") == "done"]
    return {
        "primitives": Counter(k for r in done for k in r.get("primitives", [])),
        "textures": Counter(k for r in done for k in r.get("textures", [])),
        "augmentations": Counter(a for r in done for a in r.get("augmentations", [])),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m geolrm_bench.pipelines.synth`` = ``geolrm-bench synth``."""
    from geolrm_bench.cli import main as cli_main

    return cli_main(["synth", *(argv or [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
