"""Ablations of the paper's Tables 4 and 5 as trained variants: definitions, trials and report tables.

No Ray and no training here (that is :mod:`geolrm_bench.pipelines.ablate`); this module says WHAT
is trained and how the results are tabulated.

Variants (``VARIANTS``; the paper's names in ``paper_tables.csv`` in brackets):

* Table 4: ``full`` [full], ``no_plucker`` [no_plucker], ``no_low_level`` [no_low_level],
  ``no_high_level`` [no_high_level], ``no_rope`` [no_rope3d], ``fixed_views`` [fixed_input_views]:
  stage 2 always sees 6 input views (``TrainConfig.fixed_input_views = 6``) instead of the random
  1-7. ``full`` and ``fixed_views`` are also evaluated at 4, 8 and 12 input views (Table 4 lower).
* Table 5: ``points_0/4/8/16`` [deform_points_P]: deformable sampling points of the
  RECONSTRUCTION transformer only (``ModelConfig.reconstruction.points``); the proposal network
  keeps the preset's value. The paper's ablation model is "a smaller reconstruction model"
  (section 4.5), so we read Table 5 as a property of that network; varying only it also isolates
  the effect (the tokens each variant gets come from the same proposal).

The two stages. The model code has ONE set of encoder switches (``use_plucker``, ``use_low_level``,
``use_high_level``, ``use_rope``) for both networks, so a proposal trained with the full config
cannot sit in a no-Plücker model (the low-level conv has 3 instead of 9 input channels, the
deformable attention 1 instead of 2 levels; RoPE has no weights but would change what the frozen
proposal computes). Hence: a stage-1 run is keyed by everything except the reconstruction
transformer (:func:`proposal_key`) and the seed. Variants that leave the encoder alone
(``full``, ``fixed_views``, ``points_*``) SHARE one stage-1 run per seed (trained once, or
``--stage1``); each encoder switch trains its own stage 1 with the switch set, so its ablation
applies to both networks (the paper does not say which they did). ``fixed_views`` changes stage 2
only.

Identical configurations are trained once: with a preset whose reconstruction network has P
points, ``points_P`` IS ``full`` (tiny: 4, small/paper: 8) and the report says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geolrm_bench.errors import BenchError
from geolrm_bench.io import write_bytes_atomic
from geolrm_bench.model.config import get_config
from geolrm_bench.reports import ci95, load_paper_tables

IMAGE_METRICS = ("psnr", "ssim", "lpips")
DEFAULT_SEED = 42  # official seed; seed i of K is DEFAULT_SEED + i
EVAL_VIEWS = 6  # every variant is evaluated at 6 input views (Tables 4 upper and 5)
SWEEP_VIEWS = (4, 8, 12)  # Table 4 lower: full vs fixed_views


@dataclass(frozen=True)
class Variant:
    """One row of Table 4 or 5."""

    name: str  # our name (CLI --variants, report rows)
    table: int  # 4 or 5
    paper_variant: str  # the ``variant`` column of paper_tables.csv
    switches: tuple[tuple[str, Any], ...] = ()  # ModelConfig fields (encoder switches)
    recon_points: int | None = None  # reconstruction transformer's deformable points (Table 5)
    fixed_input_views: int | None = None  # stage-2 TrainConfig.fixed_input_views
    sweep: bool = False  # also evaluated at 4 / 8 / 12 input views
    description: str = ""


VARIANTS: tuple[Variant, ...] = (
    Variant("full", 4, "full", sweep=True, description="full model (random 1-7 input views)"),
    Variant("no_plucker", 4, "no_plucker", (("use_plucker", False),), description="w/o Plücker rays"),
    Variant("no_low_level", 4, "no_low_level", (("use_low_level", False),),
            description="w/o low-level features"),
    Variant("no_high_level", 4, "no_high_level", (("use_high_level", False),),
            description="w/o high-level (DINOv2) features"),
    Variant("no_rope", 4, "no_rope3d", (("use_rope", False),), description="w/o 3D RoPE"),
    Variant("fixed_views", 4, "fixed_input_views", fixed_input_views=6, sweep=True,
            description="fixed 6 input views in training"),
    Variant("points_0", 5, "deform_points_0", recon_points=0, description="0 points (reference point only)"),
    Variant("points_4", 5, "deform_points_4", recon_points=4, description="4 deformable points"),
    Variant("points_8", 5, "deform_points_8", recon_points=8, description="8 deformable points"),
    Variant("points_16", 5, "deform_points_16", recon_points=16, description="16 deformable points"),
)
BY_NAME = {v.name: v for v in VARIANTS}
TABLES = ("4", "5", "all")


def select_variants(table: str, names: Sequence[str] | None = None) -> list[Variant]:
    """The variants of ``--table 4|5|all``, optionally restricted to ``names`` (``full`` is always
    kept: every difference is taken against it)."""
    if table not in TABLES:
        raise BenchError(f"--table must be one of {', '.join(TABLES)}, got {table!r}")
    chosen = [v for v in VARIANTS if table == "all" or str(v.table) == table]
    if names:
        unknown = sorted(set(names) - set(BY_NAME))
        if unknown:
            raise BenchError(f"unknown variants {unknown}; choose from {', '.join(BY_NAME)}")
        chosen = [v for v in VARIANTS if v.name in set(names) | {"full"}]
    if not any(v.name == "full" for v in chosen):
        chosen.insert(0, BY_NAME["full"])
    return chosen


def model_overrides(variant: Variant, preset: str, base: dict | None = None) -> dict:
    """The ``ModelConfig`` overrides (for ``get_config(preset, **overrides)``) of a variant: the
    user's ``base`` overrides plus the variant's switches; a points change rewrites the whole
    ``reconstruction`` transformer dict (only ``points`` differs from the preset's)."""
    out = dict(base or {})
    out.update(dict(variant.switches))
    if variant.recon_points is not None:
        rec = asdict(get_config(preset, **(base or {})).reconstruction)
        rec["points"] = int(variant.recon_points)
        out["reconstruction"] = rec
    get_config(preset, **out)  # validate now (one line on a bad combination)
    return out


def _canonical(preset: str, overrides: dict) -> dict:
    """The full ModelConfig as a dict (so equal configs compare equal however they were spelled)."""
    return get_config(preset, **overrides).to_dict()


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def proposal_key(preset: str, overrides: dict) -> str:
    """What a stage-1 (proposal) run depends on: the model config without the reconstruction
    transformer (the encoder switches, the proposal transformer, grid, DINO ...)."""
    cfg = _canonical(preset, overrides)
    cfg.pop("reconstruction")
    return _hash(cfg)


def config_key(preset: str, overrides: dict, fixed_input_views: int | None) -> str:
    """What a stage-2 run depends on (besides data, steps and seed, shared by every variant)."""
    return _hash({"model": _canonical(preset, overrides), "fixed_input_views": fixed_input_views})


@dataclass
class TrialSpec:
    """One Ray Tune trial: one configuration x one seed (stage 1 if needed, stage 2, evaluation)."""

    name: str  # "<variant>-s<seed>"
    variants: list[str]  # variants with this configuration (e.g. ["full", "points_4"] on tiny)
    seed: int
    model_overrides: dict
    fixed_input_views: int | None
    eval_views: list[int]
    stage1_key: str  # proposal_key + seed: trials with the same key share one stage-1 run
    config_key: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialSpec:
        return cls(**d)


def plan_trials(variants: Sequence[Variant], preset: str, seeds: Sequence[int],
                base_overrides: dict | None = None) -> list[TrialSpec]:
    """One trial per distinct (configuration, seed); variants with an identical configuration
    share it (their names are all listed in ``TrialSpec.variants``)."""
    trials: dict[tuple[str, int], TrialSpec] = {}
    for seed in seeds:
        for v in variants:
            ov = model_overrides(v, preset, base_overrides)
            ck = config_key(preset, ov, v.fixed_input_views)
            views = sorted({EVAL_VIEWS, *(SWEEP_VIEWS if v.sweep else ())})
            t = trials.get((ck, seed))
            if t is not None:
                t.variants.append(v.name)
                t.eval_views = sorted(set(t.eval_views) | set(views))
                continue
            trials[(ck, seed)] = TrialSpec(
                name=f"{v.name}-s{seed}", variants=[v.name], seed=int(seed), model_overrides=ov,
                fixed_input_views=v.fixed_input_views, eval_views=views,
                stage1_key=f"{proposal_key(preset, ov)}-s{seed}", config_key=ck)
    return list(trials.values())


def seeds_for(k: int) -> list[int]:
    if k < 1:
        raise BenchError(f"--seeds must be >= 1, got {k}")
    return [DEFAULT_SEED + i for i in range(k)]


# ----------------------------------------------------------------------------- report tables
@dataclass
class TrialResult:
    """One trial's evaluation: ``per_object[N]`` = that N's per_object.csv as a DataFrame."""

    spec: TrialSpec
    wall_s: float = 0.0
    per_object: dict[int, pd.DataFrame] = field(default_factory=dict)


def long_table(results: Sequence[TrialResult]) -> pd.DataFrame:
    """One row per (variant, seed, N, object) with status ok: ``variant, seed, num_input_views,
    object, psnr, ssim, lpips`` (a trial shared by several variants gives one row to each)."""
    rows = []
    for r in results:
        for n, df in r.per_object.items():
            ok = df[df["status"] == "ok"] if "status" in df.columns else df
            for _, o in ok.iterrows():
                for name in r.spec.variants:
                    rows.append({"variant": name, "seed": r.spec.seed, "num_input_views": int(n),
                                 "object": o["object"], **{m: float(o[m]) for m in IMAGE_METRICS}})
    return pd.DataFrame(rows, columns=["variant", "seed", "num_input_views", "object", *IMAGE_METRICS])


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> tuple[float, float, int]:
    """Mean and t-based 95% half-width of ``a - b`` over the (seed, object) pairs both have."""
    m = a.merge(b, on=["seed", "object"], suffixes=("_a", "_b"))
    d = (m[f"{metric}_a"] - m[f"{metric}_b"]).to_numpy(dtype=np.float64)
    d = d[np.isfinite(d)]
    return (float(d.mean()) if d.size else math.nan), ci95(d.tolist()), int(d.size)


def summary_table(long: pd.DataFrame, variants: Sequence[Variant], full_points: int = 8) -> pd.DataFrame:
    """One row per (variant, N): the paper's columns (``psnr, ssim, lpips``), ``<m>_ci95`` over
    every (seed, object) value, ``num_seeds``, ``num_objects``, ``d_<m>`` (variant - full, paired by
    seed and object) with ``d_<m>_ci95``, and the paper's ``paper_<m>`` / ``paper_d_<m>``.

    ``full_points``: deformable points of OUR full model's reconstruction network (the preset's).
    The paper's Δ of a Table-5 row is taken against its row with that many points (its full model
    has 8), so both Δ compare the same two settings; Table-4 rows against the paper's full."""
    paper = load_paper_tables()
    paper = paper[paper["table"].isin([4, 5])]
    rows = []
    for v in variants:
        for n in sorted(long.loc[long["variant"] == v.name, "num_input_views"].unique()):
            sel = long[(long["variant"] == v.name) & (long["num_input_views"] == n)]
            base = long[(long["variant"] == "full") & (long["num_input_views"] == n)]
            row: dict[str, Any] = {"table": v.table, "variant": v.name, "paper_variant": v.paper_variant,
                                   "num_input_views": int(n)}
            for m in IMAGE_METRICS:
                vals = sel[m].to_numpy(dtype=np.float64)
                row[m] = float(np.nanmean(vals)) if len(vals) else math.nan
                row[f"{m}_ci95"] = ci95(vals.tolist())
            row["num_seeds"] = int(sel["seed"].nunique())
            row["num_objects"] = int(sel["object"].nunique())
            row["num_values"] = int(len(sel))
            for m in IMAGE_METRICS:
                d, h, npairs = paired_difference(sel, base, m) if v.name != "full" else (0.0, 0.0, len(sel))
                row[f"d_{m}"], row[f"d_{m}_ci95"] = d, h
            row["num_pairs"] = npairs
            prow = paper[(paper["variant"] == v.paper_variant) & (paper["num_input_views"] == n)]
            ref = f"deform_points_{full_points}" if v.table == 5 else "full"
            pfull = paper[(paper["variant"] == ref) & (paper["num_input_views"] == n)]
            for m in IMAGE_METRICS:
                pv = float(prow[m].iloc[0]) if len(prow) and pd.notna(prow[m].iloc[0]) else math.nan
                pf = float(pfull[m].iloc[0]) if len(pfull) and pd.notna(pfull[m].iloc[0]) else math.nan
                row[f"paper_{m}"] = pv
                row[f"paper_d_{m}"] = pv - pf
            rows.append(row)
    return pd.DataFrame(rows)


def _f(v: float, digits: int = 2) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _pm(v: float, h: float, digits: int = 2) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.{digits}f} ± {h:.{digits}f}" if np.isfinite(h) else f"{v:.{digits}f}"


def _classify(d: float, h: float, paper_d: float) -> str | None:
    """``agree`` / ``opposite`` (our interval excludes 0) or ``noise``; None without a paper Δ."""
    if not np.isfinite(d) or not np.isfinite(paper_d):
        return None
    if not (np.isfinite(h) and abs(d) > h):
        return "noise"
    return "agree" if (np.sign(d) == np.sign(paper_d) or paper_d == 0) else "opposite"


_VERDICTS = {None: "–", "noise": "interval includes 0: no conclusion",
             "agree": "same direction as the paper", "opposite": "OPPOSITE direction to the paper"}


def _verdict(d: float, h: float, paper_d: float) -> str:
    """Table text of :func:`_classify`: does our difference to full agree in sign with the paper's,
    and does the interval exclude 0?"""
    return _VERDICTS[_classify(d, h, paper_d)]


def reproduction_findings(summary: pd.DataFrame, same_as_full: Sequence[str] = ()) -> list[str]:
    """Plain sentences: which of the paper's orderings (PSNR) this run reproduces, from the
    summary table alone (:func:`summary_table`), so the report states them, not a reader's eye.

    - each variant's Δ PSNR to ``full`` at 6 views: same direction as the paper with an interval
      excluding 0, the opposite direction likewise, or within noise;
    - Table 4: which variant is worst (the paper: no high-level features, by far);
    - Table 5: does PSNR rise with the number of deformable points (the paper: yes, 0 < 4 < 8 < 16);
    - Table 4 lower: does ``full`` rise from 4 to 12 input views, and is it above ``fixed_views``
      at every N (the paper: yes and yes).

    ``same_as_full``: variants trained as the very same trial as ``full`` (e.g. ``points_4`` on the
    tiny preset): named as such, not counted as findings."""
    out: list[str] = []
    six = summary[summary["num_input_views"] == EVAL_VIEWS]
    groups: dict[str, list[str]] = {"agree": [], "opposite": [], "noise": []}
    shared = []
    for _, r in six[six["variant"] != "full"].iterrows():
        if r["variant"] in same_as_full:
            shared.append(r["variant"])
            continue
        c = _classify(r["d_psnr"], r["d_psnr_ci95"], r["paper_d_psnr"])
        if c:
            groups[c].append(f"{r['variant']} ({r['d_psnr']:+.2f} dB vs the paper's "
                             f"{r['paper_d_psnr']:+.2f})")
    n = sum(len(g) for g in groups.values())
    if n:
        out.append(f"Δ PSNR to full at 6 views, {n} variants: {len(groups['agree'])} in the paper's "
                   "direction "
                   f"with an interval excluding 0 ({', '.join(groups['agree']) or 'none'}); "
                   f"{len(groups['opposite'])} in the opposite direction with an interval excluding 0 "
                   f"({', '.join(groups['opposite']) or 'none'}); {len(groups['noise'])} within noise, "
                   f"no conclusion ({', '.join(groups['noise']) or 'none'}).")
    if shared:
        out.append(f"{', '.join(shared)}: the same trained model as full at this preset (Δ = 0 by "
                   "construction), not a finding.")
    t4 = six[(six["table"] == 4) & (six["variant"] != "fixed_views")]
    if len(t4) > 1 and t4["psnr"].notna().any():
        worst = t4.loc[t4["psnr"].idxmin()]
        out.append(f"Worst Table-4 variant by PSNR: ours {worst['variant']} ({worst['psnr']:.2f} dB); the "
                   "paper's no_high_level (15.85 dB, 4.9 dB below full). "
                   + ("Reproduced." if worst["variant"] == "no_high_level" else "Not reproduced."))
    t5 = six[six["table"] == 5].copy()
    if len(t5) > 1:
        t5["points"] = [BY_NAME[v].recon_points for v in t5["variant"]]
        t5 = t5.sort_values("points")
        vals = t5["psnr"].to_numpy(dtype=np.float64)
        rising = bool(np.all(np.diff(vals) > 0))
        out.append("PSNR by deformable points (Table 5): " + ", ".join(
            f"{p}: {v:.2f}" for p, v in zip(t5["points"], vals)) + "; the paper's rises with the points. "
            + ("Ours rises too" if rising else "Ours does not rise monotonically")
            + " (differences between neighbours, not paired intervals: see the table).")
    full = summary[summary["variant"] == "full"].sort_values("num_input_views")
    fixed = summary[summary["variant"] == "fixed_views"].set_index("num_input_views")
    if full["num_input_views"].nunique() > 1:
        vals = full["psnr"].to_numpy(dtype=np.float64)
        rising = bool(np.all(np.diff(vals) > 0))
        out.append("full's PSNR over input views " + ", ".join(
            f"N={int(k)}: {v:.2f}" for k, v in zip(full["num_input_views"], vals))
            + (": rises, as in the paper." if rising
               else ": does not rise monotonically (the paper's does)."))
        if len(fixed):
            parts = []
            for k in full["num_input_views"]:
                if k == EVAL_VIEWS or k not in fixed.index:
                    continue
                r = fixed.loc[k]
                c = _classify(-r["d_psnr"], r["d_psnr_ci95"], -r["paper_d_psnr"])
                parts.append(f"N={int(k)}: full − fixed = {-r['d_psnr']:+.2f} ± {r['d_psnr_ci95']:.2f} dB "
                             f"(paper {-r['paper_d_psnr']:+.2f}; {c or '–'})")
            if parts:
                out.append("Training with random view counts (full) against a fixed 6 (fixed_views) away "
                           "from 6 views: " + "; ".join(parts) + ".")
    return out


def summary_markdown(summary: pd.DataFrame, budget_lines: Sequence[str], notes: Sequence[str] = (),
                     same_as_full: Sequence[str] = ()) -> str:
    """``summary.md``: the budget first, then Table 4 (6 views), the view sweep, Table 5; our rows
    beside the paper's, and each variant's difference to ``full`` with its paired 95% interval."""
    lines = ["# Ablations (paper Tables 4 and 5), trained at OUR budget", ""]
    lines += [f"> {b}" for b in budget_lines]
    lines += ["", "Ours: mean ± 95% t-interval over every (seed, object) value. Δ = variant − full, "
              "paired by (seed, object); the verdict compares its sign with the paper's Δ and says "
              "whether our interval excludes 0 (higher is better for PSNR/SSIM, lower for LPIPS).", ""]
    findings = reproduction_findings(summary, same_as_full)
    if findings:
        lines += ["## What this run reproduces (PSNR)", ""] + [f"- {f}" for f in findings] + [""]
    six = summary[summary["num_input_views"] == EVAL_VIEWS]
    for table, title in ((4, "Table 4 (6 input views)"), (5, "Table 5 (deformable sampling points)")):
        if not (six["table"] == table).any():
            continue
        part = six[(six["table"] == table) | (six["variant"] == "full")]  # full: the reference row
        lines += [f"## {title}", "",
                  "| variant | seeds | objects | PSNR | SSIM | LPIPS | paper PSNR | paper SSIM | paper LPIPS "
                  "| Δ PSNR | paper Δ PSNR | verdict (PSNR) | Δ SSIM | Δ LPIPS |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            verdict = ("reference" if r["variant"] == "full"
                       else "the same trained model as full" if r["variant"] in same_as_full
                       else _verdict(r["d_psnr"], r["d_psnr_ci95"], r["paper_d_psnr"]))
            lines.append(
                f"| {r['variant']} | {r['num_seeds']} | {r['num_objects']} "
                f"| {_pm(r['psnr'], r['psnr_ci95'])} "
                f"| {_pm(r['ssim'], r['ssim_ci95'], 3)} | {_pm(r['lpips'], r['lpips_ci95'], 3)} "
                f"| {_f(r['paper_psnr'])} | {_f(r['paper_ssim'], 3)} | {_f(r['paper_lpips'], 3)} "
                f"| {_pm(r['d_psnr'], r['d_psnr_ci95'])} | {_f(r['paper_d_psnr'])} "
                f"| {verdict} "
                f"| {_pm(r['d_ssim'], r['d_ssim_ci95'], 3)} | {_pm(r['d_lpips'], r['d_lpips_ci95'], 3)} |")
        lines.append("")
    sweep = summary[summary["variant"].isin(["full", "fixed_views"])]
    if sweep["num_input_views"].nunique() > 1:
        lines += ["## Table 4 (lower): input views, full vs fixed_views", "",
                  "| variant | N | PSNR | SSIM | paper PSNR | paper SSIM | Δ PSNR vs full | paper Δ PSNR |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in sweep.sort_values(["variant", "num_input_views"]).iterrows():
            lines.append(f"| {r['variant']} | {r['num_input_views']} | {_pm(r['psnr'], r['psnr_ci95'])} "
                         f"| {_pm(r['ssim'], r['ssim_ci95'], 3)} | {_f(r['paper_psnr'])} "
                         f"| {_f(r['paper_ssim'], 3)} | {_pm(r['d_psnr'], r['d_psnr_ci95'])} "
                         f"| {_f(r['paper_d_psnr'])} |")
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def plot_views(summary: pd.DataFrame, path: Path) -> Path | None:
    """``psnr_vs_views.png``: PSNR (mean ± 95% interval) over input views, full vs fixed_views,
    the paper's Table 4 (lower) values dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = summary[summary["variant"].isin(["full", "fixed_views"])]
    if sel.empty:
        return None
    paper = load_paper_tables()
    paper = paper[paper["table"] == 4]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, colour in (("full", "C0"), ("fixed_views", "C1")):
        s = sel[sel["variant"] == name].sort_values("num_input_views")
        if s.empty:
            continue
        err = s["psnr_ci95"].fillna(0).to_numpy()
        ax.errorbar(s["num_input_views"], s["psnr"], yerr=err, marker="o", color=colour, capsize=3,
                    label=f"ours: {name}")
        p = paper[paper["variant"] == BY_NAME[name].paper_variant].sort_values("num_input_views")
        ax.plot(p["num_input_views"], p["psnr"], ls="--", marker="x", color=colour, alpha=0.6,
                label=f"paper: {BY_NAME[name].paper_variant}")
    ax.set_xlabel("input views")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR vs input views: full vs fixed 6-view training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes_atomic(path, buf.getvalue())
    plt.close(fig)
    return Path(path)


def folder_fingerprint(folder: Path, limit: int = 200_000) -> dict:
    """``{path, files, bytes, sha256}`` of a folder's listing (relative path + size of every file):
    cheap, and it changes when files are added, removed or resized."""
    folder = Path(folder)
    h = hashlib.sha256()
    n = size = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}\0{st.st_size}\n".encode())
            n += 1
            size += st.st_size
            if n >= limit:
                break
    return {"path": str(folder.resolve()), "files": n, "bytes": size, "sha256_listing": h.hexdigest()}
