"""Evaluation reports: pandas tables, t-based 95% confidence intervals, the paper's numbers
beside ours, sweep plots and ``config.json`` provenance.

Tables (one run folder ``reports/<run>/``):

- ``per_view.csv``: one row per object and test view: ``object, view, psnr, ssim, lpips``.
- ``per_object.csv``: one row per object: ``object, status, error``, the image metrics
  averaged over the test views, ``chamfer, fscore`` (headline: the object scaled to
  [-1, 1]^3, the usual LRM evaluation frame, the one the paper's numbers are read in;
  ``chamfer_m, fscore_m``: ground-truth frame in metres; ``chamfer_unitbox, fscore_unitbox``:
  normalised frame, longest side 1),
  ``inference_s`` (seconds of the reconstruction alone), ``memory_gb`` (its peak memory,
  GiB = 2**30 bytes) and stage timings.
- ``summary.csv``: one row per (method, dataset, N) with the columns of the paper's tables
  (``method, dataset, num_input_views, psnr, ssim, lpips, chamfer, fscore, inference_s,
  memory_gb``) plus ``<metric>_ci95`` (t-based half-width), ``num_objects`` (objects with
  status ok), ``num_failed``, ``checkpoint_kind`` and ``paper_model`` (False when the
  weights are random or a small preset: such numbers say nothing about the paper's model).

Means skip NaN (e.g. a method without geometry) and use only objects with status ``ok``.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from geolrm_bench import pictures
from geolrm_bench.io import write_json_atomic, write_text_atomic
from geolrm_bench.methods import CheckpointKind, safe_name

METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips", "chamfer", "fscore", "inference_s", "memory_gb")
IMAGE_METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips")
# extra summary columns (not in the paper's tables): geometry in metres (GT frame) and in the
# normalised object frame (longest side 1); the headline chamfer/fscore are in [-1, 1]^3
EXTRA_METRICS: tuple[str, ...] = ("chamfer_m", "fscore_m", "chamfer_unitbox", "fscore_unitbox")
KEY_COLUMNS: tuple[str, ...] = ("method", "dataset", "num_input_views")
PAPER_TABLES = Path(__file__).resolve().parent / "data" / "paper_tables.csv"
# our dataset kinds -> the paper's dataset names
PAPER_DATASET = {"gso": "GSO", "omni": "OmniObject3D"}
# checkpoint kinds (geolrm_bench.methods.CheckpointKind; plain strings in the files): only the
# paper's released weights are the paper's model; our own trained weights and random presets are not
PAPER_CHECKPOINT_KINDS = (CheckpointKind.OFFICIAL,)
NOT_PAPER_KINDS = (CheckpointKind.RANDOM, CheckpointKind.PRETRAINED, CheckpointKind.BUNDLED,
                   CheckpointKind.BASELINE)


def not_paper_model(checkpoint_kind: str, preset: str | None) -> bool:
    """True when GeoLRM numbers come from random weights or a non-paper preset."""
    return checkpoint_kind in NOT_PAPER_KINDS or (checkpoint_kind != CheckpointKind.EXTERNAL
                                                  and preset not in (None, "", "paper"))


def ci95(values: Iterable[float]) -> float:
    """Half-width of the t-based 95% confidence interval of the mean (NaN ignored).

    ``t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (ddof 1).
    NaN when fewer than 2 finite values.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 2:
        return float("nan")
    s = float(np.std(x, ddof=1))
    return float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))


def summarize(per_object: pd.DataFrame, method: str, dataset: str, num_input_views: int,
              checkpoint_kind: str = "unknown", device: str = "", preset: str | None = None,
              role: str = "model") -> pd.DataFrame:
    """One summary row (a 1-row DataFrame) from a per-object table.

    Only rows with ``status == "ok"`` count; each metric's mean and CI95 skip NaN. ``role``:
    ``model`` (the evaluated method) or ``baseline`` (a reference row).
    """
    df = per_object
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    row: dict = {"method": method, "dataset": dataset, "num_input_views": int(num_input_views)}

    def values(m: str) -> pd.Series:
        return pd.to_numeric(ok[m], errors="coerce") if m in ok.columns else pd.Series([], dtype=float)

    for m in METRICS:  # the paper's columns first, in its order
        finite = values(m)[np.isfinite(values(m))]
        row[m] = float(finite.mean()) if len(finite) else float("nan")
    for m in METRICS:
        row[f"{m}_ci95"] = ci95(values(m).tolist())
    for m in EXTRA_METRICS:
        finite = values(m)[np.isfinite(values(m))]
        row[m] = float(finite.mean()) if len(finite) else float("nan")
        row[f"{m}_ci95"] = ci95(values(m).tolist())
    row["num_objects"] = int(len(ok))
    row["num_failed"] = int(len(df) - len(ok))
    row["checkpoint_kind"] = checkpoint_kind
    row["preset"] = preset or ""
    row["paper_model"] = bool(checkpoint_kind in PAPER_CHECKPOINT_KINDS and preset in (None, "", "paper"))
    row["not_paper_model"] = not_paper_model(checkpoint_kind, preset)
    row["device"] = device
    row["role"] = role
    return pd.DataFrame([row])


#: columns of ``per_object.csv`` (one row per object record, in this order)
PER_OBJECT_COLUMNS = ["object", "status", "error", "method", "dataset", "num_input_views", "psnr", "ssim",
                      "lpips", "chamfer", "fscore", "inference_s", "memory_gb", "chamfer_m", "fscore_m",
                      "chamfer_unitbox", "fscore_unitbox",
                      "num_gaussians", "render_s", "reconstruct_s", "metrics_s", "lpips_s", "memory_method",
                      "device", "warnings",
                      # stage breakdown (seconds; see geolrm_bench.scoring.ObjectRecord)
                      "gt_points_s", "load_s", "raster_s", "image_metrics_s", "geometry_s", "picture_s"]
#: columns of ``per_view.csv``
PER_VIEW_COLUMNS = ["object", "method", "dataset", "num_input_views", "view", "psnr", "ssim", "lpips"]


def eval_tables(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_view, per_object)`` DataFrames from the evaluation's per-object records
    (:class:`geolrm_bench.scoring.ObjectRecord` files); missing values are NaN."""
    rows, views = [], []
    for r in records:
        row = {c: r.get(c, np.nan) for c in PER_OBJECT_COLUMNS}
        row["warnings"] = "; ".join(r.get("warnings") or [])
        rows.append(row)
        for v in r.get("views") or []:
            views.append({"object": r.get("object"), "method": r.get("method"), "dataset": r.get("dataset"),
                          "num_input_views": r.get("num_input_views"), **v})
    return pd.DataFrame(views, columns=PER_VIEW_COLUMNS), pd.DataFrame(rows, columns=PER_OBJECT_COLUMNS)


def load_paper_tables(path: str | Path = PAPER_TABLES) -> pd.DataFrame:
    """The paper's Tables 1-5 (``table, dataset, method, num_input_views, variant, psnr, ...``)."""
    df = pd.read_csv(path)
    df["variant"] = df["variant"].fillna("")
    return df


def paper_rows(dataset: str, num_input_views: int | None = None, path: str | Path = PAPER_TABLES
               ) -> tuple[pd.DataFrame, str]:
    """The paper's main-table rows (no ablation variants) for our dataset kind and N.

    Returns (rows, note). Datasets other than gso / omni get the GSO rows with a note that
    they are for reference only (different objects).
    """
    df = load_paper_tables(path)
    df = df[(df["variant"] == "") & df["table"].isin([1, 2, 3])]
    name = PAPER_DATASET.get(dataset.lower())
    note = ""
    if name is None:
        name = "GSO"
        note = (f"dataset {dataset!r} is not one of the paper's; GSO rows shown for reference only "
                "(different objects)")
    rows = df[df["dataset"] == name]
    if num_input_views is not None:
        rows = rows[rows["num_input_views"] == int(num_input_views)]
    return rows.reset_index(drop=True), note


def _fmt(v: float, digits: int) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "chamfer": 3, "fscore": 3, "inference_s": 2, "memory_gb": 2}


def model_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The evaluated model's rows of a summary (not the baselines' reference rows)."""
    return summary[summary["role"] != "baseline"] if "role" in summary.columns else summary


def sweep_findings(records_by_n: dict[int, list[dict]], paper: pd.DataFrame | None = None,
                   paper_method: str = "GeoLRM") -> list[str]:
    """Plain sentences answering Table 3's questions for a view sweep of ONE method.

    ``records_by_n``: the per-object records (``object, status, psnr, ssim, lpips, inference_s,
    memory_gb``) of each N. For the image metrics: the mean at every N, and the change from the
    smallest to the largest N paired by object (mean ± t-based 95% half-width over the objects ok
    at both), with whether the interval excludes 0. For time and memory: the means at both ends and
    their ratio, beside the paper's ``paper_method`` rows of Table 3 (``paper``) when it has both N.
    """
    ns = sorted(int(n) for n in records_by_n)
    if len(ns) < 2:
        return []
    lo, hi = ns[0], ns[-1]
    frames = {n: pd.DataFrame([r for r in records_by_n[n] if r.get("status") == "ok"]) for n in ns}
    if any(df.empty for df in frames.values()):
        return []
    out = []
    for m, better in (("psnr", "higher"), ("ssim", "higher"), ("lpips", "lower")):
        means = [float(frames[n][m].mean()) for n in ns]
        pair = frames[hi][["object", m]].merge(frames[lo][["object", m]], on="object",
                                               suffixes=("_hi", "_lo"))
        d = (pair[f"{m}_hi"] - pair[f"{m}_lo"]).to_numpy(dtype=np.float64)
        d = d[np.isfinite(d)]
        if not d.size:
            continue
        mean_d, h = float(d.mean()), ci95(d.tolist())
        improves = mean_d > 0 if better == "higher" else mean_d < 0
        if np.isfinite(h) and abs(mean_d) > h:
            verdict = ("improves" if improves else "gets WORSE") + " (the interval excludes 0)"
        else:
            verdict = "no change beyond noise (the interval includes 0)"
        steps = np.diff(means)
        mono = np.all(steps > 0) if better == "higher" else np.all(steps < 0)
        digits = 2 if m == "psnr" else 3
        out.append(f"{m.upper()} ({better} is better) by N: " + ", ".join(
            f"{n}: {v:.{digits}f}" for n, v in zip(ns, means))
            + f"; N={hi} − N={lo} paired over {d.size} objects: {mean_d:+.{digits}f} ± {h:.{digits}f}, "
            + verdict + ("; improves at every step." if mono else "; not at every step."))
    prow = None
    if paper is not None and len(paper):
        p = paper[paper["method"] == paper_method].set_index("num_input_views")
        if lo in p.index and hi in p.index:
            prow = p
    for col, unit, what in (("inference_s", "s", "reconstruction time"), ("memory_gb", "GiB", "peak memory")):
        a, b = float(frames[lo][col].mean()), float(frames[hi][col].mean())
        if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
            continue
        line = f"{what}: {a:.2f} {unit} at N={lo}, {b:.2f} {unit} at N={hi} ({b / a:.2f}x)"
        if prow is not None and pd.notna(prow.loc[lo, col]) and pd.notna(prow.loc[hi, col]):
            pa, pb = float(prow.loc[lo, col]), float(prow.loc[hi, col])
            line += f"; the paper's {paper_method}: {pa:.2f} -> {pb:.2f} ({pb / pa:.2f}x)"
        out.append(line + ".")
    return out


# (column of per_object.csv, label) of the evaluation's stages; sub-stages start with "- "
STAGE_COLUMNS = (
    ("render_s", "rendering the views used + ground-truth points (0 when cached)"),
    ("reconstruct_s", "reconstruction: loading + model + test-view rasterization"),
    ("inference_s", "- the model alone (the paper's inference time)"),
    ("raster_s", "- test-view rasterization"),
    ("metrics_s", "metrics: PSNR, SSIM, LPIPS, Chamfer / F-score"),
    ("lpips_s", "- LPIPS"),
    ("picture_s", "qualitative picture"),
)
TOTAL_STAGES = ("render_s", "reconstruct_s", "metrics_s", "picture_s")  # they add up to one object


def stage_time_lines(per_object: pd.DataFrame) -> list[str]:
    """A Markdown table of where an evaluation's time went: per stage (:data:`STAGE_COLUMNS`)
    the mean and the range over the objects with status ok, and the whole object (the sum of
    :data:`TOTAL_STAGES`; bookkeeping between stages not included). Empty when the records hold
    no stage times (e.g. reports of older runs)."""
    ok = per_object[per_object["status"] == "ok"] if "status" in per_object else per_object
    if not len(ok) or not all(c in ok for c in TOTAL_STAGES):
        return []
    stages = [(label, ok[c].astype(float)) for c, label in STAGE_COLUMNS if c in ok and ok[c].notna().any()]
    total = ok[list(TOTAL_STAGES)].astype(float).fillna(0.0).sum(axis=1)
    lines = ["| stage | mean s | min - max s |", "|---|---|---|"]
    for label, x in [*stages, ("whole object", total)]:
        x = x.dropna()
        lines.append(f"| {label} | {x.mean():.2f} | {x.min():.2f} - {x.max():.2f} |")
    return lines


def summary_markdown(summary: pd.DataFrame, protocol_lines: Sequence[str], config: dict,
                     paper: pd.DataFrame | None = None, paper_note: str = "",
                     warnings: Sequence[str] = (), pictures: Sequence[tuple[str, str]] = (),
                     findings: tuple[str, Sequence[str]] | None = None,
                     timing: Sequence[str] = ()) -> str:
    """The text of ``summary.md``: what the model is first (the bundled model's one-sentence
    description, or a warning when the weights are not the paper's), then mean ± CI95 per
    metric with the baselines' rows, the paper's rows beside ours, the protocol and the view
    indices, and links to the qualitative pictures (``pictures``: ``(object, relative path)``).
    ``findings``: ``(title, sentences)`` of a section placed before the protocol (the sweep's
    :func:`sweep_findings`). ``timing``: the model's :func:`stage_time_lines`, a section of its own."""
    lines: list[str] = []
    models = model_rows(summary)
    has_baselines = len(models) < len(summary)
    flagged = models[models["not_paper_model"].astype(bool)] if "not_paper_model" in models else models
    bundled = flagged[flagged["checkpoint_kind"].astype(str) == str(CheckpointKind.BUNDLED)] \
        if "checkpoint_kind" in flagged else flagged.iloc[:0]
    if len(bundled):
        desc = config.get("model_description") or "Bundled GeoLRM; not the paper's model"
        lines.append(f"> **{desc}.** The toolkit's own small model, trained here: compare it with the "
                     + ("baseline rows" if has_baselines else "baseline rows of an evaluation run with "
                        "baselines (this run has none)") + ", not with the paper's numbers.")
        lines.append("")
        flagged = flagged.iloc[:0]
    if len(flagged):
        kinds = sorted({f"{r['checkpoint_kind']}" + (f" preset {r['preset']}" if r.get("preset") else "")
                        for _, r in flagged.iterrows()})
        lines.append(f"> **NOT THE PAPER'S MODEL**: weights are {'; '.join(kinds)} "
                     f"({config.get('checkpoint') or config.get('preset') or 'n/a'}). These numbers measure "
                     "the pipeline, not GeoLRM's published quality.")
        lines.append("")
    title = config.get("run", "evaluation")
    lines += [f"# {title}", ""]
    dev = config.get("device_name") or config.get("device") or "?"
    if config.get("device") and config.get("device_name"):
        dev = f"{config['device_name']} ({config['device']})"
    mem = {"cuda-max-allocated": "CUDA max allocated", "rss-sampled": "process peak RSS (sampled)",
           "rss-ru_maxrss": "process peak RSS"}.get(config.get("memory_method") or "", "")
    lines.append(f"Device: {dev}. Created {config.get('created', '')}."
                 + (f" memory_gb = {mem} during the reconstruction." if mem else ""))
    lines.append("")
    cols = ["method", "dataset", "N", "objects"] + [m for m in METRICS]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, r in summary.iterrows():
        cells = [str(r["method"]), str(r["dataset"]), str(int(r["num_input_views"])),
                 f"{int(r['num_objects'])} (+{int(r.get('num_failed', 0))} failed)"]
        for m in METRICS:
            mean, ci = r[m], r[f"{m}_ci95"]
            cell = _fmt(mean, DIGITS[m])
            if np.isfinite(mean) and np.isfinite(ci):
                cell += f" ± {ci:.{DIGITS[m]}f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if paper is not None and len(paper):
        for _, r in paper.iterrows():
            cells = [f"paper: {r['method']}", str(r["dataset"]), str(int(r["num_input_views"])),
                     f"table {int(r['table'])}"]
            cells += [_fmt(r[m], DIGITS[m]) for m in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± t-based 95% confidence half-width over objects. chamfer: mean of both directions' "
                 "mean nearest-neighbour distance, with fscore in the object scaled to [-1, 1]^3 (the usual "
                 "LRM evaluation frame; assumed to be the paper's); inference_s and memory_gb: "
                 "the reconstruction alone (GiB).")
    for _, r in summary.iterrows():
        if all(m in r for m in EXTRA_METRICS) and np.isfinite(r["chamfer_m"]):
            who = f"{r['method']}, " if "method" in r and len(summary) > 1 else ""
            lines.append(f"Geometry ({who}N = {int(r['num_input_views'])}) in the ground-truth frame in "
                         "metres: "
                         f"chamfer_m {_fmt(r['chamfer_m'], 4)} ± {_fmt(r['chamfer_m_ci95'], 4)}, "
                         f"fscore_m {_fmt(r['fscore_m'], 3)} ± {_fmt(r['fscore_m_ci95'], 3)}; in the "
                         "normalised frame (longest side 1): "
                         f"chamfer_unitbox {_fmt(r['chamfer_unitbox'], 4)} ± "
                         f"{_fmt(r['chamfer_unitbox_ci95'], 4)}, "
                         f"fscore_unitbox {_fmt(r['fscore_unitbox'], 3)} ± "
                         f"{_fmt(r['fscore_unitbox_ci95'], 3)}.")
    if has_baselines:
        lines.append("Baseline rows, on the same objects and views: `random weights` = the same preset with "
                     "random (seeded) weights; `nearest input view` = each test view predicted by the input "
                     "view whose camera direction from the object centre is closest (no geometry). A model "
                     "that learned something beats both, with non-overlapping intervals.")
    if paper_note:
        lines += ["", f"Note: {paper_note}."]
    if warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warnings]
    if pictures:
        lines += ["", "## Pictures", "",
                  "Per object: input views | ground-truth test views | predicted test views | absolute "
                  "error (rows, top to bottom). All objects: [overview.png](overview.png).", "",
                  "![overview](overview.png)", "",
                  " · ".join(f"[{name}]({rel})" for name, rel in pictures)]
    if findings and findings[1]:
        lines += ["", f"## {findings[0]}", ""] + [f"- {f}" for f in findings[1]]
    if timing:
        lines += ["", "## Where the time went", "",
                  f"Seconds per object of the model's evaluation on {dev}; the stages of a Ray run "
                  "overlap (the next object is rendered beside the model), so they are each "
                  "object's own, not shares of the run's wall time.", "", *timing]
    lines += ["", "## Protocol", ""] + [f"- {p}" for p in protocol_lines]
    return "\n".join(lines) + "\n"


def git_commit(repo: str | Path | None = None) -> str:
    """The current git commit of the checkout holding this package ('unknown' outside git)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if commit != "unknown" and dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


VERSIONED_PACKAGES = ("geolrm-bench", "torch", "torchvision", "transformers", "numpy", "scipy", "pandas",
                      "trimesh", "pyrender", "PyOpenGL", "ray", "lpips", "gsplat", "scikit-image")


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def provenance(**extra) -> dict:
    """Provenance for ``config.json``: time, git commit, Python, platform, package versions + extra."""
    d = {
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    }
    d.update(extra)
    return d


def plot_sweep(summary: pd.DataFrame, out_dir: str | Path, paper: pd.DataFrame | None = None) -> list[Path]:
    """Write ``psnr_vs_views.png``, ``ssim_vs_views.png`` and ``time_memory_vs_views.png``
    (matplotlib Agg) from summary rows over several N; the paper's GeoLRM rows are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    everything = summary.sort_values("num_input_views")
    s = model_rows(everything)  # the time/memory plot is the model's alone
    written = []
    pg = None
    if paper is not None and len(paper):
        pg = paper[paper["method"] == "GeoLRM"].sort_values("num_input_views")
    for metric, ylabel in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k, (method, g) in enumerate(everything.groupby("method", sort=False)):
            base = str(g["role"].iloc[0]) == "baseline" if "role" in g else False
            ax.errorbar(g["num_input_views"], g[metric], yerr=g[f"{metric}_ci95"].fillna(0),
                        marker="o" if not base else ".", linestyle="-" if not base else ":", capsize=3,
                        color=f"C{k}", label=str(method) if base else f"ours: {method}")
        if pg is not None and pg[metric].notna().any():
            ax.plot(pg["num_input_views"], pg[metric], "s--", color="grey", label="paper GeoLRM")
        ax.set_xlabel("input views N")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out_dir / f"{metric}_vs_views.png"
        _savefig_atomic(fig, p)
        plt.close(fig)
        written.append(p)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(s["num_input_views"], s["inference_s"], yerr=s["inference_s_ci95"].fillna(0), marker="o",
                color="C0", capsize=3, label="time (ours)")
    ax2 = ax.twinx()
    ax2.errorbar(s["num_input_views"], s["memory_gb"], yerr=s["memory_gb_ci95"].fillna(0), marker="^",
                 color="C1", capsize=3, label="memory (ours)")
    if pg is not None and pg["inference_s"].notna().any():
        ax.plot(pg["num_input_views"], pg["inference_s"], "s--", color="C0", alpha=0.5, label="time (paper)")
        ax2.plot(pg["num_input_views"], pg["memory_gb"], "v--", color="C1", alpha=0.5, label="memory (paper)")
    ax.set_xlabel("input views N")
    ax.set_ylabel("reconstruction time (s)")
    ax2.set_ylabel("peak memory (GiB)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out_dir / "time_memory_vs_views.png"
    _savefig_atomic(fig, p)
    plt.close(fig)
    written.append(p)
    return written


def _savefig_atomic(fig, path: Path) -> None:
    import io

    from geolrm_bench.io import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes_atomic(path, buf.getvalue())


def write_csv_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    return write_text_atomic(path, df.to_csv(index=False))


def write_report(run_dir: str | Path, per_view: pd.DataFrame, per_object: pd.DataFrame,
                 summary: pd.DataFrame, config: dict, protocol_lines: Sequence[str],
                 dataset: str, warnings: Sequence[str] = (),
                 pictures: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """Write per_view.csv, per_object.csv, summary.csv, summary.md (with the stage times of
    ``per_object``) and config.json (last)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    n = int(summary["num_input_views"].iloc[0]) if summary["num_input_views"].nunique() == 1 else None
    paper, note = paper_rows(dataset, n)
    paths = {
        "per_view": write_csv_atomic(per_view, run_dir / "per_view.csv"),
        "per_object": write_csv_atomic(per_object, run_dir / "per_object.csv"),
        "summary": write_csv_atomic(summary, run_dir / "summary.csv"),
    }
    md = summary_markdown(summary, protocol_lines, config, paper, note, warnings, pictures,
                          timing=stage_time_lines(per_object))
    paths["summary_md"] = write_text_atomic(run_dir / "summary.md", md)
    paths["config"] = write_json_atomic(run_dir / "config.json", config)
    return paths


def write_eval_report(cfg, protocol, run_dir: str | Path, names: list[str], records: list[dict], info: dict,
                      root: str, baselines: Sequence[dict] = ()) -> tuple[pd.DataFrame, int]:
    """Tables, summary, provenance (``config.json``) and report files of one evaluation run.

    ``cfg``: the run's :class:`geolrm_bench.evaluation.EvalConfig`; ``protocol`` its
    :class:`geolrm_bench.protocol.Protocol`; ``records`` the per-object records of ``names``
    found so far; ``info`` the model description (checkpoint kind, preset, weights hash,
    device, ``model_description``). ``baselines``: per reference method a dict ``method`` (its
    row's name), ``records``, ``checkpoint_kind``, ``preset``, ``dir`` (its folder, which gets
    its own ``per_object.csv``); their rows follow the model's in ``summary.csv`` with
    ``role`` = baseline. The qualitative pictures found under ``<run>/pictures/`` are put
    together into ``overview.png`` and linked from ``summary.md``. Returns the summary (the
    model's row first) and the number of failed objects of the model.
    """
    per_view, per_object = eval_tables(records)
    summary = summarize(per_object, cfg.method_name(), cfg.dataset_name(), protocol.num_input_views,
                        checkpoint_kind=info.get("checkpoint_kind") or "unknown",
                        device=info.get("device_name") or info.get("device") or "",
                        preset=info.get("preset") or None)
    rows = [summary]
    for b in baselines:
        _, b_objects = eval_tables(b["records"])
        write_csv_atomic(b_objects, Path(b["dir"]) / "per_object.csv")
        rows.append(summarize(b_objects, b["method"], cfg.dataset_name(), protocol.num_input_views,
                              checkpoint_kind=b.get("checkpoint_kind") or "unknown",
                              device=info.get("device_name") or info.get("device") or "",
                              preset=b.get("preset") or None, role="baseline"))
    summary = pd.concat(rows, ignore_index=True)
    picture_links = write_overview(run_dir, names, protocol) if getattr(cfg, "pictures", False) else []
    warnings = []
    if len(records) < len(names):
        warnings.append(f"{len(names) - len(records)} selected objects have no record yet")
    nfail = int((per_object["status"] != "ok").sum()) if len(per_object) else 0
    if nfail:
        warnings.append(f"{nfail} objects failed (see per_object.csv status/error)")
    methods = [m for m in per_object.get("memory_method", []) if isinstance(m, str) and m]
    config = provenance(memory_method=methods[0] if methods else "",
        run=cfg.run_name(), method=cfg.method_name(), dataset=cfg.dataset_name(), root=root,
        checkpoint=cfg.checkpoint, preset=info.get("preset") or cfg.preset, predictions=cfg.predictions,
        checkpoint_kind=info.get("checkpoint_kind"), checkpoint_sha256=info.get("checkpoint_sha256"),
        not_paper_model=bool(summary["not_paper_model"].iloc[0]), device=info.get("device"),
        model_description=info.get("model_description") or "",
        baselines=[b["method"] for b in baselines],
        device_name=info.get("device_name"), max_tokens=cfg.max_tokens, input_size=cfg.input_size,
        lpips_net=cfg.lpips_net, objects=names, protocol=protocol.to_dict(),
        input_views=protocol.input_views, test_views=protocol.test_views, eval_config=asdict(cfg))
    write_report(run_dir, per_view, per_object, summary, config, protocol.describe(cfg.lpips_net),
                 cfg.dataset_name(), warnings, picture_links)
    return summary, nfail


def picture_path(run_dir: str | Path, name: str) -> Path:
    """``<run>/pictures/<safe object name>.png``: an object's qualitative grid."""
    return Path(run_dir) / "pictures" / f"{safe_name(name)}.png"


def write_overview(run_dir: str | Path, names: Sequence[str], protocol) -> list[tuple[str, str]]:
    """``<run>/overview.png`` from the objects' grids that exist (one row per object, in
    ``names`` order); returns ``(object, relative path)`` of each grid for the links."""
    run_dir = Path(run_dir)
    found = [(n, picture_path(run_dir, n)) for n in names if picture_path(run_dir, n).exists()]
    if not found:
        return []
    pictures.overview_from_grids(found, protocol.num_input_views, len(protocol.test_views),
                                 run_dir / "overview.png", tile=min(pictures.TILE, protocol.resolution))
    return [(n, str(p.relative_to(run_dir))) for n, p in found]
