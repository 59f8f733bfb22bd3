"""Evaluation pipeline (``geolrm-bench eval`` / ``sweep-views``): scheduling and composition only.

Per object, three typed stages of :mod:`geolrm_bench.evaluation`: ``prepare_object`` (CPU task:
render the GObjaverse 40 views if needed, sample the ground-truth points) -> ``Evaluator.predict``
(ONE actor holding the :class:`geolrm_bench.methods.Method` and the LPIPS network, GPU or CPU)
-> ``score_object`` (CPU task: PSNR / SSIM / Chamfer / F-score, the per-object record). The
method adapters live in :mod:`geolrm_bench.methods`, the scoring maths in
:mod:`geolrm_bench.scoring`, the tables and report files in :mod:`geolrm_bench.reports`.

Resumable: ``<run>/objects/<name>.json`` is written atomically when an object is done (ok or
failed); a rerun skips objects whose record says ok under the same run key and retries the
others. Failures become records with ``status`` / ``error``, never a crash of the run.
Method-agnostic mode (``--predictions DIR``): see :class:`geolrm_bench.methods.PredictionsMethod`.

Layout of a run folder ``<out>`` (default ``reports/<run>``): ``renders/`` (render cache, unless
the dataset root is already renders or ``--renders`` points elsewhere), ``gt/`` (ground-truth
point cache), ``objects/`` (per-object records), the report files of :mod:`geolrm_bench.reports`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from geolrm_bench import reports
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.eval_config import BASELINE_NAMES, EvalConfig, baseline_specs, method_spec, run_key
from geolrm_bench.evaluation import (
    Evaluator,
    ObjectSource,
    finished,
    load_records,
    prepare_object,
    record_path,
    resolve_sources,
    score_object,
)
from geolrm_bench.io import ensure_output_root, read_json, sha256_file, write_json_atomic, write_text_atomic
from geolrm_bench.methods import CheckpointKind
from geolrm_bench.model import weights as bundled_weights
from geolrm_bench.pipelines.cluster import init_ray
from geolrm_bench.protocol import Protocol, input_view_ids
from geolrm_bench.protocol import select_objects as _select
from geolrm_bench.scoring import ObjectRecord

#: files / folders that identify an eval or sweep run folder written by older versions
RUN_MARKERS = ("config.json", "objects", "renders", "gt")


@dataclass
class RunResult:
    run_dir: Path
    summary: Any  # pandas DataFrame (1 row)
    records: list[dict] = field(default_factory=list)
    skipped: int = 0
    failed: int = 0


def run_eval(cfg: EvalConfig, evaluator: Evaluator | None = None,
             log: Callable[[str], None] | None = None, baseline_evaluators: dict | None = None) -> RunResult:
    """Run (or resume) one evaluation and write its report. ``evaluator`` reuses a built
    model in local mode (the sweep and benchmark pass one); ``baseline_evaluators`` the
    baselines' (:func:`run_baselines`).

    The model: ``cfg.checkpoint`` / ``cfg.preset`` / ``cfg.predictions``, or by default the
    bundled model (:meth:`EvalConfig.with_default_model`). With ``cfg.baselines`` the report
    also carries the reference rows (:func:`run_baselines`); with ``cfg.pictures`` each object
    gets ``pictures/<object>.png`` and the run ``overview.png``."""
    log = log or (lambda s: None if cfg.quiet else print(s, flush=True))
    cfg = cfg.with_default_model()  # none of --checkpoint/--preset/--predictions: the bundled model
    protocol, run_dir = cfg.protocol(), cfg.run_dir()
    check_outputs(cfg, run_dir)  # before any work: a bad --out / --renders is one line, exit 2
    sources, root = resolve_sources(cfg.dataset, cfg.root)
    chosen = set(_select([s.name for s in sources], cfg.limit, cfg.seed))
    sources = [s for s in sources if s.name in chosen]
    renders_root = Path(cfg.renders) if cfg.renders else run_dir / "renders"
    gt_root = Path(cfg.gt_cache) if cfg.gt_cache else run_dir / "gt"
    for d in (run_dir / "objects", gt_root):
        d.mkdir(parents=True, exist_ok=True)
    key = run_key(cfg, protocol)
    todo = [s for s in sources if not finished(record_path(run_dir, s.name), key)]
    log(f"eval {cfg.run_name()}: {len(sources)} objects ({len(sources) - len(todo)} already done), "
        f"input views {protocol.input_views}, test views {protocol.test_views} -> {run_dir}")
    meta = {"method": cfg.method_name(), "dataset": cfg.dataset_name(), "run_key": key}
    bar = tqdm(total=len(todo), desc="eval", unit="obj", disable=cfg.quiet or not todo)
    nfail = 0

    def _done(rec: ObjectRecord) -> None:
        nonlocal nfail
        nfail += rec.status != "ok"
        bar.update(1)
        bar.set_postfix(failed=nfail)
        if rec.status != "ok":
            tqdm.write(f"  {rec.object}: failed: {rec.error}")

    info: dict = {}
    ev = None
    if todo and (cfg.local or evaluator is not None):
        ev = evaluator or Evaluator(method_spec(cfg), cfg.lpips_net)
        info = ev.info()
        for s in todo:
            prep = prepare_object(s, str(renders_root), str(gt_root), protocol)
            out = ev.predict(prep, protocol)
            _done(score_object(prep, out, protocol, str(record_path(run_dir, s.name)), meta,
                               _picture(cfg, run_dir, s.name)))
    elif todo:
        if cfg.checkpoint:  # a bad checkpoint is one line naming the file, not a dead actor
            from geolrm_bench.model.checkpoint import validate_checkpoint  # heavy (torch): only here

            validate_checkpoint(cfg.checkpoint)
        info = _run_ray(cfg, todo, protocol, renders_root, gt_root, run_dir, meta, _done)
    bar.close()
    info = info or _previous_info(run_dir) or _describe_without_model(cfg)
    baselines = []
    if cfg.baselines:
        baselines = run_baselines(cfg, protocol, sources, renders_root, gt_root, run_dir, info,
                                  lpips=getattr(ev, "lpips", None), cache=baseline_evaluators)
    return write_run_report(cfg, protocol, run_dir, [s.name for s in sources], info, root, baselines)


def _picture(cfg: EvalConfig, run_dir: Path, name: str) -> str | None:
    return str(reports.picture_path(run_dir, name)) if cfg.pictures else None


def run_baselines(cfg: EvalConfig, protocol: Protocol, sources: list[ObjectSource], renders_root: Path,
                  gt_root: Path, run_dir: Path, info: dict, lpips: Any = None,
                  cache: dict | None = None) -> list[dict]:
    """The reference rows of the run (:func:`geolrm_bench.eval_config.baseline_specs`) on the
    same objects, views and caches, in this process (both are cheap next to the model: the
    nearest input view is image copying, the random weights are the model's own preset).
    Each is resumable like the run: ``<run>/baselines/<name>/objects/<object>.json``.
    ``lpips``: the model's LPIPS network to share; ``cache``: evaluators by baseline name,
    reused across calls (the sweep passes one). Returns what
    :func:`geolrm_bench.reports.write_eval_report` takes as ``baselines``."""
    cache = {} if cache is None else cache
    out = []
    for name, spec in baseline_specs(cfg, info.get("preset") or None).items():
        bdir = run_dir / "baselines" / name
        (bdir / "objects").mkdir(parents=True, exist_ok=True)
        key = run_key(cfg, protocol, spec)
        label = BASELINE_NAMES[name] + (f" ({spec.preset})" if spec.preset else "")
        meta = {"method": label, "dataset": cfg.dataset_name(), "run_key": key}
        todo = [s for s in sources if not finished(record_path(bdir, s.name), key)]
        ev = None
        for s in tqdm(todo, desc=f"baseline {name}", unit="obj", disable=cfg.quiet or not todo):
            if ev is None:
                ev = cache.get(name)
                if ev is None or ev.spec != spec:
                    ev = cache[name] = Evaluator(spec, cfg.lpips_net, lpips=lpips)
                lpips = ev.lpips
            prep = prepare_object(s, str(renders_root), str(gt_root), protocol)
            score_object(prep, ev.predict(prep, protocol), protocol, str(record_path(bdir, s.name)), meta)
        kind = CheckpointKind.RANDOM if spec.preset else CheckpointKind.BASELINE
        out.append({"method": label, "records": load_records(bdir, [s.name for s in sources]),
                    "checkpoint_kind": str(kind), "preset": spec.preset or "", "dir": str(bdir)})
    return out


def check_outputs(cfg: EvalConfig, run_dir: Path) -> None:
    """The run folder (created and marked as the toolkit's), the render and ground-truth caches:
    each a folder or absent, never a file; a non-empty folder of someone else's is refused
    (:func:`geolrm_bench.io.ensure_output_root`). Also checks ``--predictions`` exists."""
    if cfg.predictions and not Path(cfg.predictions).is_dir():
        raise BenchError("predictions folder not found", cfg.predictions)
    ensure_output_root(run_dir, markers=RUN_MARKERS, kind="eval")
    for d in (cfg.renders, cfg.gt_cache):
        if d is not None and Path(d).exists() and not Path(d).is_dir():
            raise BenchError("exists and is a file, not a folder", d)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def actor_error_reason(e: BaseException) -> str:
    """The one-line reason inside a Ray actor-start error (its text holds the remote traceback,
    ANSI-coloured): the last ``SomethingError: message`` line, else :func:`one_line` of it."""
    if isinstance(e.__cause__, BenchError):
        return str(e.__cause__)
    text = _ANSI.sub("", str(e))
    hits = re.findall(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", text, flags=re.M)
    hits = [h for h in hits if h[0] not in ("RayActorError", "ActorDiedError", "RayTaskError")]
    if hits:
        kind, msg = hits[-1]
        return msg.strip() if kind == "BenchError" else f"{kind}: {msg.strip()}"
    return one_line(e.__cause__ or e)


def _run_ray(cfg: EvalConfig, todo: list[ObjectSource], protocol: Protocol, renders_root: Path, gt_root: Path,
             run_dir: Path, meta: dict, on_done: Callable[[ObjectRecord], None]) -> dict:
    """Prepare and score tasks around ONE model actor (1 GPU when used, else 1 CPU + threads)."""
    ray, started = init_ray(cfg.address, cfg.num_cpus)
    try:
        # "auto": a GPU when the cluster has one (the actor resolves the device on its own node)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        use_gpu = cfg.device.startswith("cuda") or (cfg.device in ("", "auto") and gpus >= 1)
        if use_gpu and gpus < 1:
            raise BenchError("--device cuda requested but the Ray cluster has no GPU")
        # CPU: the actor's torch gets every core (capped by this machine's). It does nearly all the
        # work (model, LPIPS-VGG); the render/score tasks beside it are short. With CPU - 1
        # threads a 2-core machine ran LPIPS on one thread while the other core mostly idled.
        threads = 1 if use_gpu else max(1, min(int(ray.cluster_resources().get("CPU", 1)),
                                               os.cpu_count() or 1))
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_restarts=1)(Evaluator)
        actor = actor_cls.remote(replace(method_spec(cfg), threads=threads), cfg.lpips_net)
        try:
            info = ray.get(actor.info.remote())
        except ray.exceptions.RayActorError as e:
            raise BenchError(f"the model actor failed to start: {actor_error_reason(e)}") from None
        prep_task = ray.remote(num_cpus=1, max_retries=2)(prepare_object)
        score_task = ray.remote(num_cpus=1, max_retries=2)(score_object)
        by_ref = {}
        for s in todo:
            prep = prep_task.remote(s, str(renders_root), str(gt_root), protocol)
            pred = actor.predict.remote(prep, protocol)
            by_ref[score_task.remote(prep, pred, protocol, str(record_path(run_dir, s.name)), meta,
                                     _picture(cfg, run_dir, s.name))] = s
        pending = list(by_ref)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                try:
                    rec = ray.get(r)
                except Exception as e:  # crashed worker / actor after retries: record it
                    rec = ObjectRecord(object=by_ref[r].name, status="failed", error=one_line(e), **meta,
                                       num_input_views=protocol.num_input_views)
                    write_json_atomic(record_path(run_dir, rec.object), rec.to_dict())
                on_done(rec)
        ray.kill(actor)
        return info
    finally:
        if started:
            ray.shutdown()


def _previous_info(run_dir: Path) -> dict:
    """The model description an earlier run of this folder wrote (when nothing was left to do)."""
    try:
        c = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    except BenchError:
        c = {}
    return {k: c.get(k) for k in ("checkpoint_kind", "preset", "checkpoint_sha256", "device", "device_name",
                                  "model_description")} if c else {}


def _describe_without_model(cfg: EvalConfig) -> dict:
    kind, preset, sha = CheckpointKind.RANDOM, cfg.preset or "tiny", ""
    if cfg.predictions:
        kind, preset = CheckpointKind.EXTERNAL, ""
    elif cfg.checkpoint:
        kind, preset = CheckpointKind.of_checkpoint(cfg.checkpoint), ""
        sha = sha256_file(cfg.checkpoint) if Path(cfg.checkpoint).is_file() else ""
        if kind is CheckpointKind.BUNDLED:
            preset = bundled_weights.read_provenance(cfg.checkpoint).get("preset") or ""
    desc = bundled_weights.describe(cfg.checkpoint) if kind is CheckpointKind.BUNDLED else ""
    return {"checkpoint_kind": str(kind), "preset": preset, "checkpoint_sha256": sha, "device": cfg.device,
            "device_name": "", "model_description": desc}


def write_run_report(cfg: EvalConfig, protocol: Protocol, run_dir: Path, names: list[str], info: dict,
                     root: str, baselines: list[dict] | None = None) -> RunResult:
    """Load the records of ``names`` and write the run's report (``reports.write_eval_report``)."""
    records = load_records(run_dir, names)
    summary, nfail = reports.write_eval_report(cfg, protocol, run_dir, names, records, info, root,
                                               baselines or [])
    return RunResult(run_dir=run_dir, summary=summary, records=records, failed=nfail)


def run_sweep(cfg: EvalConfig, views: tuple[int, ...] = (4, 8, 12, 16, 20),
              log: Callable[[str], None] | None = None):
    """Table 3: the same evaluation over several N, sharing renders and ground-truth points.

    Layout: ``<sweep>/renders``, ``<sweep>/gt``, ``<sweep>/n<N>/`` (each a full eval run), and
    ``<sweep>/summary.csv`` / ``summary.md`` / the three plots.
    """
    cfg = cfg.with_default_model()  # none of --checkpoint/--preset/--predictions: the bundled model
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.method_name())
    sweep_name = cfg.run or f"sweep-{cfg.dataset_name()}-{safe}"
    sweep_dir = Path(cfg.out) if cfg.out else Path("reports") / sweep_name
    ensure_output_root(sweep_dir, markers=RUN_MARKERS, kind="sweep")  # before any work
    shared = {"renders": cfg.renders or str(sweep_dir / "renders"),
              "gt_cache": cfg.gt_cache or str(sweep_dir / "gt")}
    evaluator, ray, started, baseline_evaluators = None, None, False, {}
    if cfg.local:
        evaluator = Evaluator(method_spec(cfg), cfg.lpips_net)
    else:  # one Ray session for all N (each N still builds its own model actor)
        ray, started = init_ray(cfg.address, cfg.num_cpus)
    results = []
    try:
        for n in views:
            sub = EvalConfig(**{**asdict(cfg), "num_input_views": int(n), "input_views": None,
                                "out": str(sweep_dir / f"n{n}"), "run": f"{sweep_name}-n{n}", **shared})
            results.append(run_eval(sub, evaluator=evaluator, log=log,
                                    baseline_evaluators=baseline_evaluators))
    finally:
        if started:
            ray.shutdown()
    summary = pd.concat([r.summary for r in results], ignore_index=True)
    paper, note = reports.paper_rows(cfg.dataset_name())
    paper = paper[paper["num_input_views"].isin(list(views))]
    table3 = paper[paper["table"] == 3] if len(paper) else paper
    reports.write_csv_atomic(summary, sweep_dir / "summary.csv")
    reports.plot_sweep(summary, sweep_dir, table3)
    base = read_json(results[0].run_dir / "config.json")
    proto_lines = cfg.protocol().describe(cfg.lpips_net)
    proto_lines[1] = "Input views per N (floor(i*24/N + 0.5) among orbit views 0-23): " + "; ".join(
        f"N={n}: {', '.join(map(str, input_view_ids(n)))}" for n in views) + "."
    findings = reports.sweep_findings({n: r.records for n, r in zip(views, results)}, table3)
    md = reports.summary_markdown(summary, proto_lines, {**base, "run": sweep_name}, table3, note,
                                  findings=("What the sweep shows", findings))
    write_text_atomic(sweep_dir / "summary.md", md)
    write_json_atomic(sweep_dir / "config.json", {**base, "run": sweep_name, "views": list(views),
                                                   "runs": [str(r.run_dir) for r in results]})
    return sweep_dir, summary, results
