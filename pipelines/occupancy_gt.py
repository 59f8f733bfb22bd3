"""Occupancy ground truth over a dataset on Ray: read -> render 40 views -> voxelize -> write.

Composition only: rendering is :func:`geolrm_bench.rendering.render_object`, voxelization
:func:`geolrm_bench.occupancy.voxelize_object`; this module plans the objects, runs one Ray
task per object, keeps the manifest and writes the report.

Layout under ``out`` (default ``out/occupancy-gt``)::

    renders/<object>/<NNNNN>/...        GObjaverse-format views (kept; skipped for rendered input)
    occupancy/<object>/pts.npy          uint8 [N, 3] sorted voxel indices (official layout)
    occupancy/<object>/meta.json        the object's record, written last (atomic)
    manifest.jsonl                      one JSON record per finished or failed object (append-only)

Never losing work: an object is *done* when its record says so and every listed file still
has the recorded sha256; a rerun skips those and redoes the rest (missing or changed files
included). A worker writes ``pts.npy`` then ``meta.json`` atomically, so an object finished
just before a kill is recognised from its ``meta.json`` and not done twice. Per-object
errors become ``failed`` records with a one-line reason; Ray retries a task whose worker
crashed (``max_retries``; exceptions are not retried). Output is deterministic (sorted
indices), so a rerun after a kill gives byte-identical ``pts.npy``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from geolrm_bench import occupancy as occ
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import (
    check_replaceable,
    ensure_output_root,
    output_lock,
    read_json,
    remove_stale_staging,
    sha256_file,
    staging_prefix,
    write_json_atomic,
    write_text_atomic,
)
from geolrm_bench.pipelines.cluster import init_ray, sigterm_as_interrupt, thread_env

MANIFEST_NAME = "manifest.jsonl"
META_NAME = "meta.json"


@dataclass
class OccupancyGTConfig:
    """Options of ``geolrm-bench occupancy-gt`` (see the CLI help for each)."""

    dataset: str | None = "sample"  # dataset kind; None = detect from root
    root: Path | None = None  # dataset root, or a folder of GObjaverse-format renders
    out: Path = Path("out/occupancy-gt")
    limit: int | None = None  # first K objects (sorted by name)
    resolution: int = occ.DEFAULT_RESOLUTION  # voxel grid R
    render_resolution: int = 512  # px of the rendered views
    backend: str = "osmesa"  # renderer backend
    address: str | None = None  # existing Ray cluster; None = a local one
    num_cpus: int | None = None  # CPUs of the local Ray (default: all of this machine)
    cpus_per_task: float = 1.0
    max_retries: int = 2  # Ray retries of a task whose worker crashed
    report_dir: Path | None = None  # default reports/occupancy/<run>
    local: bool = False  # run in this process without Ray (debugging)
    progress: bool = True
    wait: bool = False  # wait for another run holding the lock on ``out`` instead of exiting 2

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.root = None if self.root is None else Path(self.root)
        self.report_dir = None if self.report_dir is None else Path(self.report_dir)
        occ._check_resolution(self.resolution)
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be >= 1, got {self.limit}")
        if self.render_resolution < 8:
            raise BenchError(f"--render-resolution must be >= 8 px, got {self.render_resolution}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise BenchError(f"--num-cpus must be >= 1, got {self.num_cpus}")


@dataclass(frozen=True)
class WorkItem:
    """One object to process: already-rendered views (``rendered``) or a dataset object to render."""

    name: str  # relative name, may contain '/' (GObjaverse "dir/id")
    rendered_dir: Path | None = None  # GObjaverse-format input folder
    ref: object | None = None  # geolrm_bench.datasets.ObjectRef (picklable)


@dataclass
class RunResult:
    records: list[dict]  # one per planned object, in plan order
    counts: dict[str, int]  # done / skipped / failed
    out: Path
    manifest: Path
    report_dir: Path
    report_files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    stale_staging: tuple[int, int] = (0, 0)  # (folders, bytes) of crashed runs' staging removed


# ----------------------------------------------------------------------------- planning

def plan_items(cfg: OccupancyGTConfig) -> list[WorkItem]:
    """The objects of the input, sorted by name, first ``limit`` of them."""
    from geolrm_bench import gobjaverse

    root = cfg.root
    items: list[WorkItem] = []
    if root is not None and root.is_dir():
        if gobjaverse.is_gobjaverse_object(root):  # one rendered object
            items = [WorkItem(root.name, rendered_dir=root)]
        else:
            try:
                rendered = gobjaverse.list_rendered_objects(root)
            except BenchError:
                rendered = []
            rendered = [p for p in rendered if gobjaverse.is_gobjaverse_object(p)]
            if rendered:
                items = [WorkItem(p.relative_to(root).as_posix(), rendered_dir=p) for p in rendered]
    if not items:
        from geolrm_bench import datasets

        kind = cfg.dataset
        if kind is None:
            if root is None:
                raise BenchError("give --dataset or --root")
            kind = datasets.detect_dataset(root)
        refs = datasets.list_objects(kind, root)
        items = [WorkItem(r.name, ref=r) for r in refs]
    items.sort(key=lambda it: it.name)
    return items[: cfg.limit] if cfg.limit is not None else items


# ----------------------------------------------------------------------------- manifest

def read_manifest(path: Path) -> dict[str, dict]:
    """Last record per object of a JSON-lines manifest; a torn or malformed line is ignored."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("object"), str):
                out[rec["object"]] = rec
    return out


def append_manifest(path: Path, record: dict) -> None:
    """Append one record as a line (flushed and fsynced: a kill loses at most this line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def record_is_valid(record: dict | None, out: Path, resolution: int) -> bool:
    """True when ``record`` is a finished object at ``resolution`` whose files all match their sha256."""
    if not record or record.get("status") != "done" or record.get("resolution") != resolution:
        return False
    files = record.get("files") or {}
    if "pts" not in files:
        return False
    for key, rel in files.items():
        p = out / rel
        if not p.is_file() or sha256_file(p) != (record.get("sha256") or {}).get(key):
            return False
    return True


def _occupancy_dir(out: Path, name: str) -> Path:
    return out / "occupancy" / name


def _render_dir(out: Path, name: str) -> Path:
    return out / "renders" / name


# ----------------------------------------------------------------------------- one object (worker)

def process_item(item: WorkItem, out: str | Path, resolution: int, render_resolution: int,
                 backend: str = "osmesa") -> dict:
    """Render (if needed), voxelize and write one object; returns its record (never raises)."""
    out = Path(out)
    t0, c0 = time.perf_counter(), time.process_time()
    rec: dict = {"object": item.name, "status": "failed", "resolution": int(resolution), "pid": os.getpid(),
                 "worker_threads": os.environ.get("LP_NUM_THREADS")}  # llvmpipe threads (worker_env)
    try:
        rendered_now = False
        render_s = 0.0
        if item.rendered_dir is not None:
            views_dir = Path(item.rendered_dir)
        else:
            views_dir = _render_dir(out, item.name)
            if not (views_dir / "metadata.json").is_file():
                tr = time.perf_counter()
                _render_into(item, views_dir, render_resolution, backend)
                render_s = time.perf_counter() - tr
                rendered_now = True
        res = occ.voxelize_object(views_dir, resolution)
        obj_dir = _occupancy_dir(out, item.name)
        pts = occ.save_pts(obj_dir / occ.PTS_FILENAME, res.indices, resolution)
        stats = occ.occupancy_stats(res.indices, resolution)
        files = {"pts": pts.relative_to(out).as_posix()}
        if item.rendered_dir is None and (views_dir / "metadata.json").is_file():
            files["render_metadata"] = (views_dir / "metadata.json").relative_to(out).as_posix()
        rec.update(
            status="done",
            files=files,
            sha256={k: sha256_file(out / v) for k, v in files.items()},
            voxels=stats.voxels,
            grid_fraction=stats.grid_fraction,
            bbox_voxels=stats.bbox_voxels,
            bbox_fraction=stats.bbox_fraction,
            views_used=res.views_used,
            views_total=res.views_total,
            valid_pixels=res.valid_pixels,
            rendered=rendered_now,
            render_seconds=round(render_s, 4),
            voxelize_seconds=round(res.seconds, 4),
            source=str(item.rendered_dir or getattr(item.ref, "path", "")),
        )
    except Exception as e:  # one object's failure must not stop the others
        rec["error"] = one_line(e, None, typed=not isinstance(e, BenchError | FileNotFoundError))
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    rec["cpu_seconds"] = round(time.process_time() - c0, 4)  # all threads of the worker process
    rec["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    rec["finished"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if rec["status"] == "done":
        write_json_atomic(_occupancy_dir(out, item.name) / META_NAME, rec)  # written last
    return rec


def _render_into(item: WorkItem, views_dir: Path, render_resolution: int, backend: str) -> None:
    """Render ``item`` to ``views_dir`` via a private staging folder, then one atomic rename.

    ``rendering.write_object_views`` clears stale temporaries of *all* objects in its
    parent folder, which would race between parallel workers sharing ``renders/``; each
    task therefore renders inside its own staging folder (``.staging-*``, not matched by
    that cleanup) and moves the finished object folder into place.
    """
    import shutil
    import tempfile

    from geolrm_bench import rendering

    asset = item.ref.load()
    views_dir.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(views_dir, overwrite=True, markers=("metadata.json",))  # a user's folder: refused
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=views_dir.parent))  # owner in the name
    try:
        got = Path(rendering.render_object(asset, staging, resolution=render_resolution, backend=backend))
        if views_dir.exists():  # empty, or our stale render at other settings: replace it
            check_replaceable(views_dir, overwrite=True, markers=("metadata.json",))
            shutil.rmtree(views_dir)
        os.replace(got, views_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- execution

#: Thread-pool sizes set in every worker: llvmpipe (OSMesa's rasterizer), OpenMP, MKL, OpenBLAS.
def worker_env(cfg: OccupancyGTConfig) -> dict[str, str]:
    """Environment of each Ray worker: its thread pools sized to the task's CPUs (cluster.thread_env)."""
    return thread_env(cfg.cpus_per_task)


def _init_ray(cfg: OccupancyGTConfig):
    """Start (or join) Ray with :func:`worker_env`; returns (ray module, whether we must shut it down)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before worker_env copies them
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return init_ray(cfg.address, cfg.num_cpus, worker_env(cfg))


def _run_local(items: list[WorkItem], cfg: OccupancyGTConfig) -> Iterator[dict]:
    for it in items:
        yield process_item(it, cfg.out, cfg.resolution, cfg.render_resolution, cfg.backend)


def _absolute_item(it: WorkItem) -> WorkItem:
    """``it`` with its input paths made absolute (the driver's working directory)."""
    ref = it.ref
    if dataclasses.is_dataclass(ref) and isinstance(getattr(ref, "path", None), str | Path):
        ref = dataclasses.replace(ref, path=Path(ref.path).absolute())
    rendered = None if it.rendered_dir is None else Path(it.rendered_dir).absolute()
    return WorkItem(it.name, rendered_dir=rendered, ref=ref)


def _run_ray(items: list[WorkItem], cfg: OccupancyGTConfig) -> Iterator[dict]:
    """Yield records as tasks finish; a bounded window of tasks is in flight.

    Paths go to the workers absolute: a worker's working directory is the one its Ray node
    was started in (``ray start`` elsewhere), not the driver's.
    """
    ray, own = _init_ray(cfg)
    out = str(Path(cfg.out).absolute())
    items = [_absolute_item(it) for it in items]
    restore = sigterm_as_interrupt()  # after ray.init, which installs its own SIGTERM handler
    try:
        # the same env_vars as the job's runtime_env (when we started Ray): workers are shared and
        # reused across objects (each keeps its GL context); on a joined cluster they set the pools
        remote = ray.remote(process_item).options(num_cpus=cfg.cpus_per_task, max_retries=cfg.max_retries,
                                                  retry_exceptions=False,
                                                  runtime_env={"env_vars": worker_env(cfg)})
        window = max(2, 2 * int(ray.available_resources().get("CPU", 1) / max(cfg.cpus_per_task, 1e-3)))
        pending: dict = {}
        queue = list(items)
        while queue or pending:
            while queue and len(pending) < window:
                it = queue.pop(0)
                pending[remote.remote(it, out, cfg.resolution, cfg.render_resolution,
                                      cfg.backend)] = it
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                it = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:  # worker crashed past its retries, or task lost
                    yield {"object": it.name, "status": "failed", "resolution": cfg.resolution,
                           "error": one_line(e), "seconds": None}
    finally:
        restore()
        if own:
            ray.shutdown()


def run_occupancy_gt(cfg: OccupancyGTConfig) -> RunResult:
    """Run the whole pipeline; returns records (plan order), counts and where the report went."""
    t_start = time.perf_counter()
    out = cfg.out
    ensure_output_root(out, markers=(MANIFEST_NAME, "occupancy", "renders"), kind="occupancy-gt", lock=False)
    if cfg.report_dir is not None:  # checked now, not after every object was processed
        ensure_output_root(cfg.report_dir, markers=("summary.md", "config.json"), kind="occupancy-report",
                           lock=False)
    with output_lock(out, wait=cfg.wait, log=lambda m: print(m, file=sys.stderr, flush=True)):
        return _run_locked(cfg, out, t_start)


def _run_locked(cfg: OccupancyGTConfig, out: Path, t_start: float) -> RunResult:
    stale = remove_stale_staging(out / "renders")  # crashed workers' leftovers (we hold the lock)
    items = plan_items(cfg)
    manifest_path = out / MANIFEST_NAME
    manifest = read_manifest(manifest_path)
    records: dict[str, dict] = {}
    todo: list[WorkItem] = []
    for it in items:
        rec = manifest.get(it.name)
        if record_is_valid(rec, out, cfg.resolution):
            records[it.name] = {**rec, "skipped": True}
            continue
        meta = _occupancy_dir(out, it.name) / META_NAME
        if meta.is_file():  # finished just before an interruption, not yet in the manifest
            try:
                rec = read_json(meta)
            except BenchError:
                rec = None
            if isinstance(rec, dict) and record_is_valid(rec, out, cfg.resolution):
                append_manifest(manifest_path, rec)
                records[it.name] = {**rec, "skipped": True}
                continue
        todo.append(it)

    runner = _run_local if cfg.local else _run_ray
    counts = collect_records(lambda: runner(todo, cfg), len(todo), manifest_path, records, cfg.progress,
                             "occupancy-gt")

    ordered = [records[it.name] for it in items if it.name in records]
    run_name = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = cfg.report_dir or Path("reports") / "occupancy" / run_name
    seconds = time.perf_counter() - t_start
    files = write_report(ordered, report_dir, cfg, seconds=seconds)
    return RunResult(ordered, counts, out, manifest_path, report_dir, files, seconds, stale)


def collect_records(run: Callable[[], Iterator[dict]], total: int, manifest_path: Path, records: dict,
                    progress: bool, desc: str) -> dict[str, int]:
    """Drain the records of a pipeline's workers (``run()`` is only called when ``total`` > 0):
    each is appended to the manifest as it arrives and stored in ``records`` (by object name,
    which already holds the skipped ones), with a progress bar and SIGTERM turned into
    KeyboardInterrupt. Returns the counts ``done`` / ``failed`` / ``skipped``."""
    counts = {"done": 0, "failed": 0, "skipped": len(records)}
    bar = None
    if progress:
        bar = tqdm(total=total, unit="obj", desc=desc, dynamic_ncols=True)
    restore = sigterm_as_interrupt()
    try:
        if total:
            for rec in run():
                append_manifest(manifest_path, rec)
                records[rec["object"]] = {**rec, "skipped": False}
                counts["done" if rec["status"] == "done" else "failed"] += 1
                if bar is not None:
                    bar.set_postfix(done=counts["done"], failed=counts["failed"], skipped=counts["skipped"])
                    bar.update(1)
    finally:
        restore()
        if bar is not None:
            bar.close()
    return counts


# ----------------------------------------------------------------------------- report

REPORT_COLUMNS = ["object", "status", "voxels", "grid_fraction", "bbox_voxels", "bbox_fraction",
                  "views_used", "seconds", "skipped", "error"]


def report_tables(records: list[dict], resolution: int):
    """(per-object DataFrame, distribution DataFrame) of the records (pandas)."""
    import pandas as pd

    df = pd.DataFrame([{c: r.get(c) for c in REPORT_COLUMNS} for r in records], columns=REPORT_COLUMNS)
    for c in ("voxels", "bbox_voxels", "views_used"):
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    for c in ("grid_fraction", "bbox_fraction", "seconds"):
        df[c] = pd.to_numeric(df[c]).astype(float)
    df["skipped"] = df["skipped"].astype("boolean").fillna(False).astype(bool)
    done = df[df["status"] == "done"]
    cols = ["voxels", "grid_fraction", "bbox_fraction", "views_used", "seconds"]
    if len(done):
        desc = done[cols].astype(float).describe(percentiles=[0.05, 0.5, 0.95]).T
        desc = desc.rename(columns={"50%": "median", "5%": "p5", "95%": "p95"})
        dist = desc[["count", "mean", "median", "p5", "p95", "min", "max"]]
    else:
        dist = pd.DataFrame(columns=["count", "mean", "median", "p5", "p95", "min", "max"])
    dist.index.name = "quantity"
    return df, dist


def _paper_sentence(dist, resolution: int) -> str:
    paper = occ.PAPER_OCCUPANCY_FRACTION
    if "grid_fraction" not in dist.index or not dist.loc["grid_fraction", "count"]:
        return "No object finished, so nothing to compare with the paper's ~5% occupancy."
    g = float(dist.loc["grid_fraction", "median"])
    b = float(dist.loc["bbox_fraction", "median"])
    rel = "below" if g < 0.8 * paper else ("above" if g > 1.25 * paper else "close to")
    return (f"Median occupancy is {100 * g:.2f}% of the {resolution}^3 grid ({100 * b:.2f}% of each object's "
            f"occupied bounding box), {rel} the paper's ~{100 * paper:.0f}% of the volume occupied "
            f"(paper A.1, GObjaverse at 128^3). Surface-only ground truth of compact objects is "
            f"expected to sit below it at low R and fall as R grows (voxels ~ R^2, grid ~ R^3).")


def write_report(records: list[dict], report_dir: Path, cfg: OccupancyGTConfig,
                 seconds: float = 0.0) -> dict[str, Path]:
    """Write summary.csv (per object), distribution.csv, summary.md and config.json (last)."""
    report_dir = Path(report_dir)
    df, dist = report_tables(records, cfg.resolution)
    done = df[df["status"] == "done"]
    failed = df[df["status"] != "done"]
    files = {"summary_csv": report_dir / "summary.csv", "distribution_csv": report_dir / "distribution.csv",
             "summary_md": report_dir / "summary.md", "config": report_dir / "config.json"}
    write_text_atomic(files["summary_csv"], df.to_csv(index=False))
    write_text_atomic(files["distribution_csv"], dist.to_csv())
    lines = [
        f"# Occupancy ground truth: {len(df)} objects at {cfg.resolution}^3",
        "",
        f"- output: `{cfg.out}` (pts.npy under `occupancy/`, renders under `renders/`)",
        f"- done: {len(done)} ({int(done['skipped'].sum())} from earlier runs), "
        f"failed: {len(failed)}",
        f"- total occupied voxels: {int(done['voxels'].fillna(0).sum())}; "
        f"seconds (this run's wall clock): {seconds:.1f}",
        "",
        _paper_sentence(dist, cfg.resolution),
        "",
        "## Distribution over finished objects",
        "",
        dist.to_markdown(floatfmt=".4g") if len(dist) else "(none)",
        "",
        "## Per object",
        "",
        df.drop(columns=["error"]).astype(object).where(df.drop(columns=["error"]).notna(), "")
        .to_markdown(index=False, floatfmt=".4g"),
    ]
    if len(failed):
        lines += ["", "## Failures", ""]
        lines += [f"- `{r.object}`: {r.error}" for r in failed.itertuples()]
    write_text_atomic(files["summary_md"], "\n".join(lines) + "\n")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    try:
        from geolrm_bench.reports import provenance

        config = provenance(config=config)
    except Exception:  # reports module optional here; config alone still useful
        config = {"config": config}
    write_json_atomic(files["config"], config)
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m geolrm_bench.pipelines.occupancy_gt`` = ``geolrm-bench occupancy-gt``."""
    from geolrm_bench.cli import main as cli_main

    return cli_main(["occupancy-gt", *(argv or [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
