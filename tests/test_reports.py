"""Report tables: CI95 against scipy.stats.t, summary means against numpy, paper rows, plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from geolrm_bench import reports
from geolrm_bench.protocol import Protocol


def test_ci95_matches_scipy_t_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 100):
        x = rng.normal(5.0, 2.0, n)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert reports.ci95(x) == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert np.isnan(reports.ci95([1.0]))
    assert np.isnan(reports.ci95([]))
    # NaN ignored
    assert reports.ci95([1.0, np.nan, 3.0]) == pytest.approx(reports.ci95([1.0, 3.0]))


def _per_object(n=7, seed=1):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "object": [f"o{i}" for i in range(n)],
        "status": ["ok"] * (n - 1) + ["failed"],
        "error": [""] * (n - 1) + ["boom"],
        "psnr": rng.uniform(15, 30, n), "ssim": rng.uniform(0.7, 0.95, n), "lpips": rng.uniform(0.1, 0.3, n),
        "chamfer": rng.uniform(0.01, 0.1, n), "fscore": rng.uniform(0.5, 1.0, n),
        "inference_s": rng.uniform(0.1, 2, n), "memory_gb": rng.uniform(1, 3, n),
    })
    df.loc[n - 1, ["psnr", "ssim", "lpips", "chamfer", "fscore", "inference_s", "memory_gb"]] = np.nan
    df.loc[0, "chamfer"] = np.nan  # one object without geometry
    return df


def test_summary_is_mean_of_ok_objects():
    df = _per_object()
    s = reports.summarize(df, "GeoLRM", "gso", 6, checkpoint_kind="random")
    assert list(s.columns[:10]) == ["method", "dataset", "num_input_views", "psnr", "ssim", "lpips",
                                    "chamfer", "fscore", "inference_s", "memory_gb"]
    ok = df.iloc[:-1]
    for m in reports.METRICS:
        vals = ok[m].to_numpy(dtype=float)
        vals = vals[~np.isnan(vals)]
        assert s[m].iloc[0] == pytest.approx(float(np.mean(vals)), rel=1e-12)
        half = stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / np.sqrt(len(vals))
        assert s[f"{m}_ci95"].iloc[0] == pytest.approx(half, rel=1e-10)
    assert s["num_objects"].iloc[0] == 6 and s["num_failed"].iloc[0] == 1
    assert not s["paper_model"].iloc[0]
    assert reports.summarize(df, "GeoLRM", "gso", 6, checkpoint_kind="official")["paper_model"].iloc[0]


def test_paper_rows_read_the_published_values():
    rows, note = reports.paper_rows("gso", 6)
    g = rows[rows["method"] == "GeoLRM"].iloc[0]
    got = (g["psnr"], g["ssim"], g["lpips"], g["chamfer"], g["fscore"])
    assert got == (23.57, 0.872, 0.167, 0.167, 0.892)
    assert note == ""
    rows, _ = reports.paper_rows("omni", 6)
    assert rows[rows["method"] == "GeoLRM"]["psnr"].iloc[0] == 24.74
    rows, note = reports.paper_rows("sample", 20)
    assert "reference only" in note and rows[rows["method"] == "GeoLRM"]["memory_gb"].iloc[0] == 9.43
    # the packaged copy equals the shared reference
    import pathlib
    ref = pathlib.Path("/work/shared/reference/paper_tables.csv")
    if ref.exists():
        assert reports.PAPER_TABLES.read_bytes() == ref.read_bytes()


def test_write_report_files_and_warning_first(tmp_path):
    df = _per_object()
    pv = pd.DataFrame({"object": ["o0"], "view": [28], "psnr": [20.0], "ssim": [0.9], "lpips": [0.2]})
    s = reports.summarize(df, "GeoLRM-tiny", "sample", 6, checkpoint_kind="random")
    p = Protocol(num_input_views=6)
    cfg = reports.provenance(run="eval-test", preset="tiny", protocol=p.to_dict(), device="cpu")
    paths = reports.write_report(tmp_path, pv, df, s, cfg, p.describe(), "sample")
    md = paths["summary_md"].read_text()
    assert md.splitlines()[0].startswith("> **NOT THE PAPER'S MODEL**")
    assert "0, 4, 8, 12, 16, 20" in md and "28, 31, 34, 37" in md
    assert "paper: GeoLRM" in md
    back = pd.read_csv(paths["summary"])
    assert back["psnr"].iloc[0] == pytest.approx(s["psnr"].iloc[0])
    conf = json.loads(paths["config"].read_text())
    assert conf["protocol"]["test_views"] == [28, 31, 34, 37] and "packages" in conf


def test_stage_times_table_and_section(tmp_path):
    df = _per_object()
    assert reports.stage_time_lines(df) == []  # no stage columns: no table
    stages = {"render_s": [1.0, 0.0, 2.0, 1.5, 0.5, 1.0, np.nan], "reconstruct_s": [1.2] * 6 + [np.nan],
              "inference_s": [0.3] * 6 + [np.nan], "metrics_s": [5.0, 6.0, 5.5, 5.0, 6.5, 5.0, np.nan],
              "lpips_s": [4.5] * 6 + [np.nan], "picture_s": [0.2] * 6 + [np.nan]}
    for k, v in stages.items():
        df[k] = v
    lines = reports.stage_time_lines(df)
    rows = {ln.split(" | ")[0].lstrip("| "): ln.strip("| ").split(" | ")[1:] for ln in lines[2:]}
    ok = slice(0, 6)  # the failed seventh object is left out
    whole = [sum(stages[k][i] for k in reports.TOTAL_STAGES) for i in range(6)]
    assert rows["whole object"] == [f"{np.mean(whole):.2f}", f"{min(whole):.2f} - {max(whole):.2f}"]
    render = stages["render_s"][ok]
    assert rows["rendering the views used + ground-truth points (0 when cached)"] == [
        f"{np.mean(render):.2f}", f"{min(render):.2f} - {max(render):.2f}"]
    assert "- test-view rasterization" not in rows  # a stage without times has no row
    s = reports.summarize(df, "GeoLRM-tiny", "sample", 6, checkpoint_kind="random")
    p = Protocol(num_input_views=6)
    cfg = reports.provenance(run="eval-test", preset="tiny", protocol=p.to_dict(), device="cpu")
    pv = pd.DataFrame({"object": ["o0"], "view": [28], "psnr": [20.0], "ssim": [0.9], "lpips": [0.2]})
    md = reports.write_report(tmp_path, pv, df, s, cfg, p.describe(), "sample")["summary_md"].read_text()
    assert md.index("## Where the time went") < md.index("## Protocol") and lines[-1] in md


def test_plot_sweep_writes_pngs(tmp_path):
    rows = []
    for n in (4, 8, 12):
        rows.append(reports.summarize(_per_object(seed=n), "GeoLRM", "gso", n, "random"))
    s = pd.concat(rows, ignore_index=True)
    paper, _ = reports.paper_rows("gso")
    paths = reports.plot_sweep(s, tmp_path, paper)
    assert {p.name for p in paths} == {"psnr_vs_views.png", "ssim_vs_views.png", "time_memory_vs_views.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_not_paper_model_flag():
    df = _per_object()
    cases = {("official", "paper"): False, ("official", "small"): True, ("random", "paper"): True,
             ("random", "tiny"): True, ("pretrained", "paper"): True, ("external", None): False}
    for (kind, preset), flagged in cases.items():
        s = reports.summarize(df, "m", "gso", 6, checkpoint_kind=kind, preset=preset)
        assert bool(s["not_paper_model"].iloc[0]) is flagged, (kind, preset)
        md = reports.summary_markdown(s, ["protocol line"], {"run": "r"})
        assert md.startswith("> **NOT THE PAPER'S MODEL**") is flagged, (kind, preset)
        assert bool(s["paper_model"].iloc[0]) is (kind == "official" and preset == "paper")


def test_sweep_findings_pair_objects_and_state_time_and_memory_growth():
    # three objects; PSNR +2, +2.5, +3 dB from N=4 to N=12 (paired mean 2.5, s = 0.5), N=8 between;
    # SSIM unchanged (0 difference everywhere: interval 0, "no change"); LPIPS falls by 0.1 each.
    def recs(n, dpsnr, dlpips, t, mem):
        return [{"object": o, "status": "ok", "psnr": 10.0 + i + dpsnr * (4 + i) / 2, "ssim": 0.5,
                 "lpips": 0.4 - dlpips, "inference_s": t, "memory_gb": mem} for i, o in enumerate("abc")]
    by_n = {4: recs(4, 0.0, 0.0, 0.5, 1.0), 8: recs(8, 0.5, 0.05, 0.75, 1.5),
            12: recs(12, 1.0, 0.1, 1.0, 2.0)}
    by_n[12].append({"object": "d", "status": "failed"})  # failed objects are left out
    paper, _ = reports.paper_rows("gso")
    lines = reports.sweep_findings(by_n, paper[paper["table"] == 3])
    text = "\n".join(lines)
    half = 4.302652729749464 * 0.5 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n)
    assert "PSNR (higher is better) by N: 4: 11.00, 8: 12.25, 12: 13.50; " \
           f"N=12 − N=4 paired over 3 objects: +2.50 ± {half:.2f}, improves (the interval excludes 0); " \
           "improves at every step." in text
    assert "SSIM (higher is better) by N: 4: 0.500, 8: 0.500, 12: 0.500" in text
    assert "no change beyond noise" in lines[1] and "not at every step" in lines[1]
    assert "LPIPS (lower is better)" in lines[2] and "-0.100 ± 0.000, improves" in lines[2]
    # the paper's GeoLRM (Table 3): 0.51 s at 4 views, 1.16 s at 12; 4.30 -> 6.96 GB
    assert "reconstruction time: 0.50 s at N=4, 1.00 s at N=12 (2.00x); " \
           "the paper's GeoLRM: 0.51 -> 1.16 (2.27x)" in text
    assert "peak memory: 1.00 GiB at N=4, 2.00 GiB at N=12 (2.00x); the paper's GeoLRM: 4.30 -> 6.96" in text
    assert reports.sweep_findings({4: by_n[4]}) == []
    # the sweep's summary places them in their own section before the protocol
    s = reports.summarize(_per_object(), "GeoLRM", "gso", 4, "random")
    md = reports.summary_markdown(s, ["protocol line"], {"run": "r"},
                                  findings=("What the sweep shows", lines))
    assert md.index("## What the sweep shows") < md.index("## Protocol")
    assert f"- {lines[0]}\n" in md
    assert "## What" not in reports.summary_markdown(s, ["p"], {"run": "r"}, findings=("What", []))
