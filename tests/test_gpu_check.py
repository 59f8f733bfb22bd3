"""``python -m geolrm_bench.gpu_check`` (issue 14): its CPU-side logic, with the CPU standing in for the GPU.

Guarded steps and exit-code rules, the report files, the budget, the gsplat build timeout, the
no-CUDA path, and two runs in a subprocess that looks like the offline GPU node: the optional
packages (ray, trimesh, pyrender, open3d, lpips, OpenEXR, scipy, scikit-image, pandas, ...)
blocked, and the project not installed (plain ``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from geolrm_bench import gpu_check as gc
from geolrm_bench.errors import BenchError

ROOT = Path(__file__).resolve().parents[1]
# stricter than the stock image (which has pandas, scipy, scikit-image, matplotlib): the check needs
# torch, numpy and transformers alone (tqdm and safetensors come with transformers, so stay allowed)
BLOCKED = ("ray", "trimesh", "pyrender", "open3d", "lpips", "OpenEXR", "scipy", "skimage", "pandas",
           "tabulate", "matplotlib", "gsplat", "sklearn", "imageio", "psutil")

# Emulates the GPU node in a fresh interpreter: every BLOCKED package is absent (an import raises
# ModuleNotFoundError, and importlib.util.find_spec, which transformers uses to probe optional
# packages, answers None), and the editable install's finder is removed, so geolrm_bench is found
# only through PYTHONPATH=<checkout> (model/ and pipelines/ mapped by geolrm_bench/__init__.py).
NODE_PRELUDE = textwrap.dedent("""
    import importlib.util, sys
    BLOCKED = set({blocked!r})
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    sys.path.insert(0, {root!r})

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on the GPU image)",
                                          name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: (
        None if name.split(".")[0] in BLOCKED else _find_spec(name, package))
""").format(blocked=BLOCKED, root=str(ROOT))


def _node_python(code: str, tmp_path: Path, timeout: float = 600, env: dict | None = None):
    script = tmp_path / "node.py"
    script.write_text(NODE_PRELUDE + textwrap.dedent(code))
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    run_env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env=run_env)


def _ctx(tmp_budget: float = 100.0, **plan_changes) -> gc.Context:
    args = gc.parse_args(["--device", "cpu", "--quick"])
    plan = gc.make_plan(args, torch.device("cpu"))
    if plan_changes:
        plan = gc.Plan(**{**plan.__dict__, **plan_changes})
    return gc.Context(plan=plan, budget=gc.Budget(tmp_budget), log=lambda s: None)


# ------------------------------------------------------------------------------------------ steps
def test_a_raising_step_is_an_error_row_and_the_rest_run():
    calls = []

    def ok(ctx):
        calls.append("ok")
        return [gc.Row("a", "x", "ok", True, measured=1.0, limit=2.0)]

    def boom(ctx):
        calls.append("boom")
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    def failing(ctx):
        calls.append("fail")
        return [gc.Row("c", "y", "fail", True, measured=3.0, limit=2.0)]

    steps = [gc.Step("a", "A", ok, True, False), gc.Step("b", "B", boom, False, False),
             gc.Step("c", "C", failing, True, False)]
    results = gc.run_steps(steps, _ctx())
    assert calls == ["ok", "boom", "fail"]
    assert [r.status for r in results] == ["ok", "error", "fail"]
    err = results[1].rows[0]
    assert err.status == "error" and "\n" not in err.detail
    assert err.detail == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert all(r.seconds >= 0 for r in results)
    assert gc.exit_code(results) == 1


@pytest.mark.parametrize("rows, code", [
    ([gc.Row("s", "c", "ok", True), gc.Row("s", "t", "info"), gc.Row("s", "u", "skip", True)], 0),
    ([gc.Row("s", "c", "fail", True)], 1),  # a failed correctness check
    ([gc.Row("s", "c", "fail", False)], 0),  # a missed performance goal does not fail the run
    ([gc.Row("s", "c", "error", False)], 1),  # any step that raised does
    ([gc.Row("s", "c", "skip", True)], 0),  # skipped correctness checks do not
])
def test_exit_code_rules(rows, code):
    assert gc.exit_code([gc.StepResult("s", "S", gc._worst(rows), 0.0, rows)]) == code


def test_budget_skips_optional_steps_only():
    ran = []

    def mark(name):
        def fn(ctx):
            ran.append(name)
            return [gc.Row(name, "x", "ok", True)]
        return fn

    steps = [gc.Step("needed", "N", mark("needed"), True, False, lambda ctx: 1e6),
             gc.Step("optional", "O", mark("optional"), True, True, lambda ctx: 1e6),
             gc.Step("cheap", "C", mark("cheap"), True, True, lambda ctx: 1.0)]
    results = gc.run_steps(steps, _ctx(tmp_budget=gc.REPORT_RESERVE_S + 60))
    assert ran == ["needed", "cheap"]
    skipped = results[1].rows[0]
    assert skipped.status == "skip" and skipped.detail.startswith("time budget: needs ~1000000 s")
    assert gc.exit_code(results) == 0


def test_table3_cells_are_guarded_and_cut_by_the_budget(monkeypatch):
    """A raising cell is an error row and the sweep goes on; once a measured cell shows that the next
    would overrun the budget, the remaining cells are skip rows."""
    monkeypatch.setattr(gc, "GeoLRM", lambda cfg: torch.nn.Linear(2, 2))  # no real model needed
    seen = []

    def fake_cell(ctx, model, cfg, dtype, views, paper, per_run):
        seen.append((dtype, views))
        if (dtype, views) == ("bf16", 2):
            raise RuntimeError("expected scalar type Float but found BFloat16")
        per_run[dtype] = 1.0 if views == 2 else 1000.0  # seconds per view per run
        return gc.Row("table3", f"{dtype} {views} views", "info", measured=0.1, unit="s")

    monkeypatch.setattr(gc, "_table3_cell", fake_cell)
    ctx = _ctx(tmp_budget=gc.REPORT_RESERVE_S + 60, views=(2, 3, 4), repeats=1)
    rows = gc.step_table3(ctx)
    assert seen == [("fp32", 2), ("bf16", 2), ("fp32", 3)]
    by_name = {r.check: r for r in rows}
    assert by_name["bf16 2 views"].status == "error" and "BFloat16" in by_name["bf16 2 views"].detail
    assert by_name["fp32 3 views"].status == "info"
    # fp32 now costs 1000 s per view and run: bf16 (no measurement yet, estimated from fp32) and
    # everything at 4 views would overrun the 60 s left
    for name in ("bf16 3 views", "fp32 4 views", "bf16 4 views"):
        assert by_name[name].status == "skip" and by_name[name].detail.startswith("time budget")


def test_skip_option_and_bad_options():
    ctx = _ctx(skip=("rasterizer",))
    res = gc.run_steps([s for s in gc.STEPS if s.name == "rasterizer"], ctx)
    assert res[0].rows[0].status == "skip" and "--skip" in res[0].rows[0].detail
    cpu = torch.device("cpu")
    with pytest.raises(BenchError, match="unknown step"):
        gc.make_plan(gc.parse_args(["--skip", "golden,nope"]), cpu)
    with pytest.raises(BenchError, match="--views"):
        gc.make_plan(gc.parse_args(["--views", "4,x"]), cpu)
    with pytest.raises(BenchError, match="--views"):
        gc.make_plan(gc.parse_args(["--views", "4,30"]), cpu)
    with pytest.raises(BenchError, match="--steps"):
        gc.make_plan(gc.parse_args(["--steps", "0"]), cpu)


def test_plans():
    full = gc.make_plan(gc.parse_args([]), torch.device("cuda"))
    assert full.views == (4, 8, 12, 16, 20) and full.bench_preset == "paper" and full.golden
    assert full.bench_input_size == 448 and full.dtypes == ("fp32", "bf16") and full.repeats == 5
    quick = gc.make_plan(gc.parse_args(["--quick"]), torch.device("cuda"))
    assert quick.views == (4, 20) and quick.bench_preset == "paper" and quick.golden
    cpu = gc.make_plan(gc.parse_args(["--quick", "--views", "3"]), torch.device("cpu"))
    assert cpu.views == (3,) and cpu.bench_preset == "tiny" and cpu.bench_input_size == 56 and not cpu.golden


def test_paper_table3_numbers_as_printed_in_the_paper():
    # GeoLRM rows of Table 3 (seconds, GB), as quoted in issue 14 and TRAINING.md
    assert gc.paper_table3() == {4: (0.51, 4.30), 8: (0.84, 5.50), 12: (1.16, 6.96), 16: (1.51, 8.23),
                                 20: (1.84, 9.43)}


def test_layer_errors_by_hand():
    a = {"rgb": torch.zeros(1, 3, 2, 2), "alpha": torch.ones(1, 1, 2, 2), "depth": torch.zeros(1, 1, 2, 2)}
    b = {"rgb": torch.zeros(1, 3, 2, 2), "alpha": torch.ones(1, 1, 2, 2), "depth": torch.zeros(1, 1, 2, 2)}
    b["rgb"][0, 0, 0, 0] = 0.6  # one of 12 values off by 0.6
    b["depth"][0, 0, 1, 1] = -0.2
    errs = gc.layer_errors(a, b)
    assert errs["rgb"] == pytest.approx((0.05, 0.6))
    assert errs["alpha"] == (0.0, 0.0)
    assert errs["depth"] == pytest.approx((0.05, 0.2))


def test_strict_fp32_turns_tf32_off_and_restores():
    before = gc.tf32_state()
    with gc.strict_fp32():
        inside = gc.tf32_state()
    assert inside["matmul"] in ("ieee", "highest") and inside["cudnn_conv"] == "ieee"
    assert gc.tf32_state() == before


def test_synthetic_training_batch():
    from geolrm_bench.model.config import get_config

    cfg = get_config("tiny", input_size=28)
    b = gc.synthetic_scene_batch(cfg, 16, n_inputs=2, n_gaussians=200)
    assert b["images"].shape == (1, 2, 3, 28, 28) and b["target_rgb"].shape == (1, 4, 3, 16, 16)
    assert b["occupancy"].shape == (1, 32, 32, 32)
    g = gc.shell_gaussians(200, seed=0, scale=(0.01, 0.03))
    idx = ((g.means + 0.5) * 32).floor().long()
    occ = b["occupancy"][0]
    assert bool(occ[idx[:, 0], idx[:, 1], idx[:, 2]].all())
    assert int(occ.sum()) == len({tuple(i) for i in idx.tolist()})
    # the shell (radius 0.35 at distance ~1.9) covers the image centre of every target view
    assert bool((b["target_alpha"][0, :, 0, 8, 8] > 0.5).all())
    assert float(b["target_depth"][0, :, 0, 8, 8].min()) > 1.0


# ------------------------------------------------------------------------------------------ report
def _sample_results() -> tuple[list[gc.StepResult], gc.Context]:
    ctx = _ctx()
    rows_a = [gc.Row("golden", "latents_first", "ok", True, measured=3e-6, limit=2e-4, unit="max abs"),
              gc.Row("golden", "latents_pad", "fail", True, measured=5e-4, limit=2e-4, unit="max abs",
                     detail="max abs diff 0.0005 > 0.0002 | pipe")]
    rows_b = [gc.Row("table3", "fp32 4 views", "info", seconds=2.5, measured=0.42, limit=0.51, unit="s")]
    ctx.table3 = [
        {"dtype": "fp32", "views": 4, "preset": "paper", "input_size": 448, "gaussians": 262144, "runs": 5,
         "time_median_s": 0.42, "time_min_s": 0.40, "max_allocated_gb": 3.9, "max_reserved_gb": 4.5,
         "memory_method": "cuda-max-allocated", "paper_time_s": 0.51, "paper_memory_gb": 4.30,
         "time_vs_paper": 0.42 / 0.51, "memory_vs_paper": 3.9 / 4.3, "meets_paper": True},
        {"dtype": "bf16", "views": 4, "preset": "paper", "input_size": 448, "gaussians": 262144, "runs": 5,
         "time_median_s": 0.2, "time_min_s": 0.19, "max_allocated_gb": 5.0, "max_reserved_gb": None,
         "memory_method": "cuda-max-allocated", "paper_time_s": 0.51, "paper_memory_gb": 4.30,
         "time_vs_paper": 0.2 / 0.51, "memory_vs_paper": 5.0 / 4.3, "meets_paper": False},
    ]
    results = [gc.StepResult("golden", "golden", gc._worst(rows_a), 12.0, rows_a),
               gc.StepResult("table3", "Table 3", gc._worst(rows_b), 30.0, rows_b)]
    return results, ctx


def test_report_files(tmp_path):
    results, ctx = _sample_results()
    code = gc.exit_code(results)
    assert code == 1
    env = {"device_name": "NVIDIA H200", "git_commit": "abc123", "torch": "2.11.0", "torch_cuda": "13.0",
           "driver": "580.1", "versions": {"transformers": "5.17.0", "gsplat": None}}
    paths = gc.write_report(tmp_path / "out", results, ctx, env, code, {"quick": True})
    assert [p.name for p in paths] == ["summary.md", "summary.csv", "table3.csv", "config.json"]

    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["check"] for r in rows] == ["latents_first", "latents_pad", "fp32 4 views"]
    assert rows[1]["status"] == "fail" and rows[1]["correctness"] == "True"
    assert float(rows[1]["measured"]) == 5e-4
    assert rows[2]["seconds"] == "2.5000" and rows[2]["limit"] == "0.51"

    t3 = list(csv.DictReader((tmp_path / "out" / "table3.csv").open()))
    assert [(r["dtype"], r["views"], r["meets_paper"]) for r in t3] == [("fp32", "4", "True"),
                                                                         ("bf16", "4", "False")]
    assert t3[1]["max_reserved_gb"] == "" and float(t3[0]["paper_memory_gb"]) == 4.30

    md = (tmp_path / "out" / "summary.md").read_text()
    assert md.startswith("# GPU check: NVIDIA H200") and "**FAIL**" in md and "commit `abc123`" in md
    assert "| 4 | 0.51 | 4.3 | 0.42 | 3.9 | 4.5 | yes | 0.2 | 5 |  | no |" in md
    assert "0.0005 > 0.0002 / pipe" in md  # a '|' in a detail cannot break the table
    assert "CPU stand-in run" in md

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["exit_code"] == 1 and config["environment"]["git_commit"] == "abc123"
    assert config["plan"]["device"] == "cpu" and config["tolerances"]["gsplat_mae"] == 1e-3
    assert [s["status"] for s in config["steps"]] == ["fail", "info"]


def test_markdown_table_and_slug():
    md = gc.markdown_table(["a", "b"], [[1, 0.5], [float("nan"), None], [True, 1.23456e-5]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.5 |", "|  |  |", "| yes | 1.23e-05 |"]
    assert gc.slug("NVIDIA H200") == "NVIDIA-H200"
    assert gc.slug("cpu AMD EPYC 7B13 64-Core Processor") == "cpu-AMD-EPYC-7B13-64-Core-Processor"
    assert gc.slug("Tesla V100-SXM2-32GB (MIG 1g.5gb)") == "Tesla-V100-SXM2-32GB-MIG-1g.5gb"


def test_git_commit_sources(tmp_path, monkeypatch):
    commit, source = gc.git_commit()  # this checkout
    assert source == "git" and len(commit.split("-")[0]) == 40
    monkeypatch.setattr(gc, "REPO_ROOT", tmp_path)  # a copied checkout without .git
    monkeypatch.delenv("GEOLRM_BENCH_COMMIT", raising=False)
    assert gc.git_commit() == ("unknown", "no git, no GEOLRM_BENCH_COMMIT, no gpu_kit/COMMIT")
    (tmp_path / "gpu_kit").mkdir()
    (tmp_path / "gpu_kit" / "COMMIT").write_text("0123abc-dirty\n")
    assert gc.git_commit() == ("0123abc-dirty", "gpu_kit/COMMIT (when the carry kit was made)")
    monkeypatch.setenv("GEOLRM_BENCH_COMMIT", "feedbeef")
    assert gc.git_commit() == ("feedbeef", "GEOLRM_BENCH_COMMIT")


# ------------------------------------------------------------------------------------------ gsplat build
def _fake_gsplat(root: Path, backend_body: str) -> None:
    (root / "gsplat" / "cuda").mkdir(parents=True)
    (root / "gsplat" / "__init__.py").write_text("")
    (root / "gsplat" / "cuda" / "__init__.py").write_text("")
    (root / "gsplat" / "cuda" / "_backend.py").write_text(backend_body)


@pytest.mark.parametrize("body, built, reason", [
    ("_C = object()\n", True, ""),
    ("_C = None\n", False, "no CUDA toolkit"),
    ("raise RuntimeError('nvcc fatal: unsupported gpu architecture')\n", False, "nvcc fatal"),
])
def test_gsplat_build_outcomes(tmp_path, monkeypatch, body, built, reason):
    _fake_gsplat(tmp_path, body)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("MAX_JOBS", "1")  # the build sets it in os.environ when unset
    ok, secs, why = gc._gsplat_build(_ctx(), timeout=60)
    assert ok is built and secs >= 0 and reason in why


def test_gsplat_build_timeout_kills_the_build(tmp_path, monkeypatch):
    # the fake build starts a grandchild (like ninja/nvcc) and both sleep; the timeout must end both
    pidfile = tmp_path / "grandchild.pid"
    _fake_gsplat(tmp_path, textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        time.sleep(60)
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("MAX_JOBS", "1")
    t0 = time.perf_counter()
    ok, secs, why = gc._gsplat_build(_ctx(), timeout=3)
    assert not ok and "did not finish in the 3 s left" in why and time.perf_counter() - t0 < 30
    pid = int(pidfile.read_text())
    for _ in range(50):  # the killed grandchild may take a moment to be reaped by init
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with open(f"/proc/{pid}/stat") as f:  # a zombie has been killed, only not reaped yet
            assert f.read().split()[2] == "Z"


# ------------------------------------------------------------------------------------------ subprocess runs
def test_no_cuda_prints_one_line_and_exits_zero():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "geolrm_bench.gpu_check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA: torch ")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_gpu_check_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("no CUDA: torch ")


def test_imports_on_a_stock_gpu_image(tmp_path):
    """The check and everything it imports load without the optional packages and without an install."""
    out = _node_python("""
        import geolrm_bench.gpu_check, geolrm_bench.golden, geolrm_bench.model.geolrm as g
        import geolrm_bench.training.loop
        bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("model from", g.__file__)
        print("blocked modules loaded:", bad)
        try:
            import scipy
        except ModuleNotFoundError:
            print("scipy blocked")
    """, tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"model from {ROOT / 'model' / 'geolrm.py'}" in out.stdout
    assert "blocked modules loaded: []" in out.stdout and "scipy blocked" in out.stdout


def test_cpu_quick_end_to_end_on_a_stock_image(tmp_path):
    """``--device cpu --quick``: every step runs (golden skipped by design), report written, exit 0."""
    out_dir = tmp_path / "report"
    out = _node_python(f"""
        from geolrm_bench.gpu_check import main
        code = main(["--device", "cpu", "--quick", "--steps", "2", "--out", {str(out_dir)!r}])
        print("exit", code)
        sys.exit(code)
    """, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = list(csv.DictReader((out_dir / "summary.csv").open()))
    status = {(r["step"], r["check"]): r["status"] for r in rows}
    assert status[("golden", "step")] == "skip" and status[("gsplat", "step")] == "skip"
    assert status[("rasterizer", "torch tiles: cpu vs cpu")] == "ok"
    assert status[("rasterizer", "torch pairs: cpu vs cpu")] == "ok"
    assert status[("table3", "fp32 2 views")] == "info" and status[("table3", "bf16 2 views")] == "info"
    assert status[("training", "proposal (2 updates)")] == "ok"
    assert status[("training", "reconstruction (2 updates)")] == "ok"
    assert not [r for r in rows if r["status"] in ("error", "fail")]
    t3 = list(csv.DictReader((out_dir / "table3.csv").open()))
    assert [(r["dtype"], r["preset"], r["views"]) for r in t3] == [("fp32", "tiny", "2"),
                                                                    ("bf16", "tiny", "2")]
    assert all(float(r["time_median_s"]) > 0 and int(r["gaussians"]) > 0 for r in t3)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["exit_code"] == 0 and config["plan"]["bench_preset"] == "tiny"
    assert "PASS: wrote" in out.stdout and "| step | check | status |" in out.stdout
